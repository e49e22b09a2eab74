"""Promote against a real Triton: good versions serve, bad ones are refused and serving is untouched."""

from __future__ import annotations

import pytest

from orchestrator.sample import Variant
from orchestrator.store.metafile import VersionStatus
from orchestrator.store.repository import candidate_name

from .conftest import Stack, stub_pids

pytestmark = pytest.mark.triton


def _import(stack: Stack, package) -> None:
    result = stack.cli("import", str(package))
    assert result.returncode == 0, result.stderr


def settle_startup_reload(stack: Stack) -> None:
    """Triton re-instantiates a --load-model model on the first load_model after it starts (measured);
    absorb that once so the tests below see only what the orchestrator causes."""
    stack.triton().load("classifier")


def test_promote_verifies_then_serves_and_keeps_last_verified_resident(stack: Stack, packages):
    settle_startup_reload(stack)
    _import(stack, packages[Variant.BETTER])
    pids_before = stub_pids(stack.repository)
    result = stack.cli("promote", "v2")  # exactly as users type it: one model in the repository
    assert result.returncode == 0, result.stderr
    assert "promote v1 -> v2" in result.stdout
    assert stack.served_by_triton() == 2
    store = stack.store()
    assert store.resident() == (1, 2)
    assert {v: e.state for v, e in stack.triton().states("classifier").items()} == {1: "READY", 2: "READY"}
    attested = store.attestation(2)
    assert attested.verification.status is VersionStatus.VERIFIED
    assert attested.verification.golden["accuracy"] > attested.verification.golden["served_accuracy"]
    assert attested.verification.verified_by == "pytest"
    assert "verification" not in (store.folder / "2" / "meta.yaml").read_text()  # as filed, never rewritten
    # v1 kept its process: no reload of the served version (journal writes live outside the model folder)
    v1 = next(path for path in pids_before if "/1/" in path)
    assert stub_pids(stack.repository)[v1] == pids_before[v1]
    assert not (stack.repository / candidate_name("classifier")).exists()
    last = store.journal.read().records[-1]
    assert (last.action, last.result, last.from_version, last.to_version) == ("promote", "succeeded", 1, 2)
    assert last.duration_ms is not None and last.duration_ms > 0


@pytest.mark.parametrize(("variant", "reason"), [
    (Variant.CORRUPT, "load failed"),
    (Variant.NAN, "NaN"),
    (Variant.ZEROS, "all zeros"),
    (Variant.EXPLODING, "explodes"),
    (Variant.WORSE, "worse than the served version"),
])
def test_bad_candidate_is_refused_and_old_version_keeps_serving(stack: Stack, packages, variant, reason):
    settle_startup_reload(stack)
    _import(stack, packages[variant])
    pids_before = stub_pids(stack.repository, "classifier")
    config_before = (stack.repository / "classifier" / "config.pbtxt").read_bytes()
    result = stack.cli("promote", "classifier", "2")
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert reason in result.stderr and "not promoted" in result.stderr
    assert result.stderr.count("\n") == 1
    assert stack.served_by_triton() == 1
    assert stub_pids(stack.repository, "classifier") == pids_before
    assert (stack.repository / "classifier" / "config.pbtxt").read_bytes() == config_before
    assert not (stack.repository / candidate_name("classifier")).exists()
    store = stack.store()
    assert store.status(2) is VersionStatus.FAILED
    assert reason in (store.attestation(2).verification.reason or "")
    last = store.journal.read().records[-1]
    assert (last.action, last.result, last.to_version) == ("promote", "failed", 2) and reason in last.reason
    assert store.versions() == [1, 2]  # the refused version is kept, marked failed


def test_quarantined_version_needs_force(stack: Stack, packages):
    _import(stack, packages[Variant.BETTER])
    from orchestrator.store.metafile import Verification  # noqa: PLC0415

    stack.store().set_verification(2, Verification(status=VersionStatus.QUARANTINED, reason="NaN in production"))
    refused = stack.cli("promote", "v2")
    assert refused.returncode == 4 and "quarantined (NaN in production)" in refused.stderr
    assert stack.served_by_triton() == 1
    forced = stack.cli("promote", "v2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert stack.served_by_triton() == 2


def test_promoting_the_served_version_is_a_no_op(stack: Stack):
    result = stack.cli("promote", "v1")
    assert result.returncode == 0 and "already serves" in result.stdout
    assert stack.store().journal.read().records == ()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["promote", "v9"], 2, "has no version v9 (versions: v1)"),
    (["promote", "detector", "v2"], 2, "unknown model 'detector'"),
    (["promote", "latest"], 2, "is neither a version (v<N>) nor a label of classifier"),
    (["rollback", "--to", "v7"], 2, "has no version v7"),
])
def test_user_errors_are_one_line_with_exit_code(stack: Stack, args, code, message):
    result = stack.cli(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert stack.served_by_triton() == 1


def test_unreachable_triton_names_the_url_and_changes_nothing(stack: Stack, packages):
    _import(stack, packages[Variant.BETTER])
    before = stack.snapshot()
    env = stack.env() | {"ORCH_TRITON_URL": "http://127.0.0.1:9"}
    result = stack.cli("--timeout", "2", "promote", "v2", env=env)
    assert result.returncode == 9, result.stderr
    assert "Triton at http://127.0.0.1:9 is unreachable" in result.stderr
    assert stack.snapshot() == before


@pytest.mark.parametrize(("damage", "code", "message"), [
    (lambda s: __import__("shutil").rmtree(s.state / "classifier" / "golden"), 4, "has no golden set"),
    (lambda s: (s.state / "classifier" / "policy.yaml").write_text("promotion: {keep_resident: many}"), 6,
     "keep_resident must be a int"),
    (lambda s: (s.state / "classifier" / "policy.yaml").write_text("promotion: {keep_residents: 1}"), 6,
     "unknown setting(s) keep_residents"),
    (lambda s: (s.repository / "classifier" / "config.pbtxt").write_text("name: classifier {{"), 6,
     "config.pbtxt is invalid"),
    (lambda s: (s.repository / "classifier" / "2" / "meta.yaml").write_text("model: [unclosed"), 6,
     "meta.yaml: not valid YAML"),
])
def test_broken_files_stop_promote_before_anything_changes(stack: Stack, packages, damage, code, message):
    _import(stack, packages[Variant.BETTER])
    damage(stack)
    before = stack.snapshot()
    result = stack.cli("promote", "v2")
    assert result.returncode == code, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert stack.snapshot() == before
    assert stack.served_by_triton() == 1


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_locked_control_api_refuses_a_missing_or_wrong_key(stack: Stack, packages, key):
    _import(stack, packages[Variant.BETTER])
    env = stack.env()
    env.pop("ORCH_ADMIN_KEY")
    if key:
        env["ORCH_ADMIN_KEY"] = key
    before = stack.snapshot()
    result = stack.cli("promote", "v2", env=env)
    assert result.returncode == 8, result.stderr
    assert "403" in result.stderr and result.stderr.count("\n") == 1
    assert "test-admin-key" not in result.stderr + result.stdout  # the right key is never printed
    after = stack.snapshot()
    assert {k: v for k, v in after.items() if "version_history" not in k} == \
        {k: v for k, v in before.items() if "version_history" not in k}
    assert stack.served_by_triton() == 1


def test_admin_key_is_read_from_a_file(stack: Stack, packages, tmp_path):
    _import(stack, packages[Variant.BETTER])
    key_file = tmp_path / "admin.key"
    key_file.write_text(stack.env()["ORCH_ADMIN_KEY"] + "\n")
    key_file.chmod(0o600)  # a key file others can read is refused
    env = stack.env()
    env.pop("ORCH_ADMIN_KEY")
    env["ORCH_ADMIN_KEY_FILE"] = str(key_file)
    result = stack.cli("promote", "v2", env=env)
    assert result.returncode == 0, result.stderr


def test_promote_shows_progress_on_stderr_and_keeps_stdout_parseable(stack: Stack, packages):
    import json  # noqa: PLC0415

    settle_startup_reload(stack)
    _import(stack, packages[Variant.BETTER])
    result = stack.cli("promote", "v2", "--json", "--progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["to_version"] == 2
    steps = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if line.startswith("[")]
    assert steps[:2] == ["checking memory", "loading v2 as classifier__candidate"]
    assert steps[-1] == "switching classifier to v2"


def test_promote_is_quiet_off_a_terminal(stack: Stack, packages):
    settle_startup_reload(stack)
    _import(stack, packages[Variant.BETTER])
    result = stack.cli("promote", "v2")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_candidate_larger_than_the_device_is_refused_in_one_line(stack: Stack, packages, build_key, tmp_path):
    import shutil  # noqa: PLC0415

    package = tmp_path / "huge"
    shutil.copytree(packages[Variant.BETTER], package)
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text() + "memory_mb: 1000000000000\n")  # an exabyte or so
    _import(stack, build_key.sign(package))
    before = stack.snapshot()
    result = stack.cli("promote", "v2")
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("\n") == 1 and "does not fit beside what serves" in result.stderr
    assert "MiB available" in result.stderr
    assert stack.served_by_triton() == 1
    assert not (stack.repository / candidate_name("classifier")).exists()
    after = stack.snapshot()
    changed = {k for k in after if before.get(k) != after[k]}
    assert all("version_history" in k for k in changed), changed  # only the journal's refusal record
