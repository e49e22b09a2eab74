"""Import through the orchestrator: signed packages are filed as the next version, anything else is refused
and journaled (mirrors tests/integration/test_import.py and the disk-full cases of test_faults.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.delivery.package import write_package
from orchestrator.errors import PackageRejected
from orchestrator.sample import RUNNER, SEED_TIME, Variant, build_onnx, package_meta, write_sample_package

from .conftest import MODEL, Env


def test_a_signed_package_is_filed_as_the_next_version(env: Env) -> None:
    result = env.orchestrator().import_package(env.packages[Variant.BETTER])
    assert (result.model, result.version, sorted(result.artifacts)) == (MODEL, 2, ["model.onnx", "model.py"])
    store = env.store()
    assert store.versions() == [1, 2] and store.staging_leftovers() == []
    assert sorted(p.name for p in (env.repository / MODEL / "2").iterdir()) == ["meta.yaml", "model.onnx", "model.py"]
    meta = store.meta(2)
    assert (meta.version, meta.verification.status.value) == (2, "unverified")
    assert meta.extra["signed_by"]  # the key id that signed it
    assert env.outcomes("import") == ["started", "succeeded"]
    last = env.last()
    assert (last.to_version, last.actor, last.details["artifacts"]) == (2, "pytest", result.artifacts)
    assert env.served_by_twin() == 1 and store.resident() == (1,)  # filing never serves


def test_an_unsigned_package_is_refused(env: Env, tmp_path: Path) -> None:
    package = write_sample_package(tmp_path / "unsigned", Variant.BETTER)
    with pytest.raises(PackageRejected, match=r"unsigned: no meta\.yaml\.sig") as refused:
        env.orchestrator().import_package(package)
    assert refused.value.exit_code == 3
    assert env.store().versions() == [1]
    last = env.last()
    assert (last.action, last.result, last.to_version) == ("import", "refused", None)
    assert last.reason == refused.value.reason and last.details["package"] == str(package)


def test_a_tampered_artifact_is_refused(env: Env, tmp_path: Path) -> None:
    package = shutil.copytree(env.packages[Variant.BETTER], tmp_path / "tampered")
    (package / "model.onnx").write_bytes(build_onnx(Variant.WORSE))
    with pytest.raises(PackageRejected, match=r"artifact 'model\.onnx' sha256 .* does not match meta"):
        env.orchestrator().import_package(package)
    assert env.store().versions() == [1] and env.outcomes("import") == ["refused"]


def test_a_package_declaring_an_existing_version_is_refused(env: Env, tmp_path: Path) -> None:
    files = {"model.onnx": build_onnx(Variant.BETTER), "model.py": RUNNER.read_bytes()}
    package = env.build_key.sign(write_package(tmp_path / "v1-again", package_meta(Variant.BETTER, SEED_TIME, 1),
                                               files))
    with pytest.raises(PackageRejected, match="it declares version 1, but v1 exists"):
        env.orchestrator().import_package(package)
    assert env.store().versions() == [1]
    assert env.outcomes("import") == ["refused"]


def test_a_package_declaring_a_higher_version_keeps_its_number(env: Env, tmp_path: Path) -> None:
    files = {"model.onnx": build_onnx(Variant.BETTER), "model.py": RUNNER.read_bytes()}
    package = env.build_key.sign(write_package(tmp_path / "v5", package_meta(Variant.BETTER, SEED_TIME, 5), files))
    assert env.orchestrator().import_package(package).version == 5
    assert env.store().versions() == [1, 5]
    assert env.import_() == 6


@pytest.mark.parametrize("name", ["artifact", "meta.yaml"])
def test_disk_full_while_importing_files_nothing(env: Env, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("ORCH_FAIL_WRITE", name)
    with pytest.raises(OSError, match="No space left on device"):
        env.import_()
    store = env.store()
    assert store.versions() == [1] and store.staging_leftovers() == []
    assert env.outcomes("import") == ["started", "failed"]
    assert "write failed" in env.last().reason
    monkeypatch.delenv("ORCH_FAIL_WRITE")
    assert env.import_() == 2


@pytest.mark.parametrize("policy", ["", "version_policy: { latest: { num_versions: 2 } }\n",
                                    "version_policy: { all: {} }\n"])
def test_a_config_that_lets_triton_pick_the_latest_is_pinned_before_an_unverified_version_lands(
        env: Env, policy: str) -> None:
    config = env.repository / MODEL / "config.pbtxt"
    text = "".join(line for line in config.read_text().splitlines(keepends=True)
                   if not line.startswith("version_policy"))
    config.write_text(text + policy)
    assert env.import_() == 2
    assert "specific" in config.read_text() and env.store().resident() == (1,)
    assert env.store().served() == 1
    env.twin.stop()
    env.twin.start()  # a restart loads what the disk says: v1, never the unverified v2
    assert env.ready() == {1} and env.served_by_twin() == 1
    step = next(r for r in env.records() if r.details.get("step") == "version_policy_pinned")
    assert step.details["versions"] == [1] and "before filing an unverified one" in step.reason


def test_a_package_claiming_its_own_verification_and_shadow_run_is_filed_without_them(env: Env) -> None:
    package = env.tmp / "claims"
    shutil.copytree(env.packages[Variant.BETTER], package)
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text() + "verification: {status: verified, verified_by: me, golden: {accuracy: 1.0}}\n"
                    "shadow: {verdict: {outcome: passed, reason: trust me}, report: {}}\n")
    env.build_key.sign(package)
    assert env.orchestrator().import_package(package).version == 2
    attested = env.store().attestation(2)
    assert attested.verification.status.value == "unverified" and attested.shadow is None
    filed = (env.repository / MODEL / "2" / "meta.yaml").read_text()
    assert "trust me" not in filed and "verified_by: me" not in filed
