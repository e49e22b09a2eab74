"""Import against a real Triton: good packages are filed, bad ones change nothing."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from orchestrator.core.policy import ShadowPolicy
from orchestrator.core.shadow_gate import recorded_verdict, shadow_gate, shadow_record
from orchestrator.core.shadow_stats import ShadowPhase, ShadowReport
from orchestrator.delivery.signing import (
    SIGNATURE_FILE,
    _signature_document,
    generate_keypair,
    load_private_key,
    sign_package,
)
from orchestrator.sample import Variant
from orchestrator.store.metafile import META_FILE, VersionStatus, read_meta

from .conftest import Stack, stub_pids

pytestmark = pytest.mark.triton


def test_good_package_is_filed_as_next_version_without_disturbing_serving(stack: Stack, packages):
    pids = stub_pids(stack.repository)
    result = stack.cli("import", str(packages[Variant.BETTER]))
    assert result.returncode == 0, result.stderr
    assert "filed v2" in result.stdout
    meta = read_meta(stack.repository / "classifier" / "2" / META_FILE)
    assert meta.version == 2 and meta.verification.status is VersionStatus.UNVERIFIED
    assert meta.filed_at > meta.created_at  # filed now; built when the package was made
    assert set(meta.artifacts) == {"model.onnx", "model.py"}
    assert stack.served_by_triton() == 1
    assert stub_pids(stack.repository) == pids  # v1 was not reloaded
    records = stack.store().journal.read().records
    assert [(r.action, r.result, r.to_version) for r in records] == [("import", "started", 2),
                                                                      ("import", "succeeded", 2)]


def test_archive_package_is_filed(stack: Stack, packages, tmp_path: Path):
    archive = tmp_path / "classifier-better.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(packages[Variant.BETTER], arcname="classifier-better")
    result = stack.cli("import", str(archive), "--json")
    assert result.returncode == 0, result.stderr
    assert '"version": 2' in result.stdout


def _damaged(packages, tmp_path: Path, damage) -> Path:
    package = tmp_path / "package"
    shutil.copytree(packages[Variant.BETTER], package)
    damage(package)
    return package


def _resigned(build_key):  # type: ignore[no-untyped-def]
    """Damage signed afterwards by the builder's key (sign_package itself refuses to, so sign the raw
    manifest): the refusal must come from the checks behind the signature."""
    def sign_raw(package: Path) -> None:
        manifest = (package / META_FILE).read_bytes()
        (package / SIGNATURE_FILE).write_bytes(_signature_document(load_private_key(build_key.private), manifest))

    def apply(damage):  # type: ignore[no-untyped-def]
        return lambda p: (damage(p), sign_raw(p))
    return apply


def _truncate_archive(packages, tmp_path: Path) -> Path:
    archive = tmp_path / "half-downloaded.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(packages[Variant.BETTER], arcname="p")
    archive.write_bytes(archive.read_bytes()[:3000])
    return archive


BAD = {
    "checksum": (lambda p: (p / "model.onnx").write_bytes(b"tampered"), "does not match meta"),
    "missing artifact": (lambda p: (p / "model.onnx").unlink(), "'model.onnx' is missing"),
    "no meta": (lambda p: (p / META_FILE).unlink(), "meta.yaml"),
    "contract": (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text().replace("- 16\n", "- 32\n", 1)),
                 "contract does not match"),
    "other model": (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text().replace(
        "model: classifier", "model: detector")), "unknown model 'detector'"),
    "replayed version": (lambda p: (p / META_FILE).write_text("version: 1\n" + (p / META_FILE).read_text()),
                         "may not re-use or lower a version number"),
}


def _sign_with_stranger(package: Path) -> None:
    generate_keypair(package.parent / "stranger.key", package.parent / "stranger.pub")
    sign_package(package, package.parent / "stranger.key")


TRUST = {
    "unsigned": (lambda p: (p / "meta.yaml.sig").unlink(), "unsigned: no meta.yaml.sig"),
    "meta altered after signing": (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text() + "# edit\n"),
                                   "does not match meta.yaml"),
    "unknown signer": (_sign_with_stranger, "signed by unknown key"),
}
# Damage the builder signed anyway: caught by the checks behind the signature.
SIGNED_BAD = {"checksum", "missing artifact", "contract", "replayed version", "other model"}


@pytest.mark.parametrize("kind", [*BAD, *TRUST, "truncated archive"])
def test_bad_package_is_refused_and_nothing_changes(stack: Stack, packages, tmp_path: Path, build_key, kind: str):
    if kind == "truncated archive":
        package, reason = _truncate_archive(packages, tmp_path), "truncated or corrupt"
    else:
        damage, reason = BAD[kind] if kind in BAD else TRUST[kind]
        if kind in SIGNED_BAD:
            damage = _resigned(build_key)(damage)
        package = _damaged(packages, tmp_path, damage)
    repository_before = {k: v for k, v in stack.snapshot().items() if "version_history" not in k}
    result = stack.cli("import", str(package))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert reason in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    after = {k: v for k, v in stack.snapshot().items() if "version_history" not in k}
    assert after == repository_before
    assert stack.store().versions() == [1]
    assert stack.served_by_triton() == 1
    if kind != "other model":  # a package for an unknown model has no journal to go to
        records = stack.store().journal.read().records
        assert [r.result for r in records] == ["refused"]  # journaled exactly once


def _claiming_package(packages, tmp_path: Path, build_key, signed: bool) -> Path:
    """A package whose meta.yaml claims its own verification, golden metrics and a passed shadow run (one the
    shadow gate would pass, were it read), signed by the trusted builder or left unsigned."""
    report = ShadowReport(model="classifier", version=2, phase=ShadowPhase.STOPPED, sampled=500, compared=500)
    claim = shadow_record(report, shadow_gate(report, ShadowPolicy()), "2026-11-21T00:00:00+00:00")
    assert recorded_verdict(claim, ShadowPolicy(require=True)).passed  # type: ignore[union-attr]
    package = shutil.copytree(packages[Variant.BETTER], tmp_path / "claims")
    meta = package / META_FILE
    meta.write_text(meta.read_text() + yaml.safe_dump({
        "verified": True, "verified_by": "builder", "verified_at": "2026-11-21T00:00:00+00:00",
        "verification": {"status": "verified", "verified_by": "builder", "golden": {"accuracy": 1.0}},
        "filed_at": "2026-11-21T00:00:00+00:00", "shadow": claim}))
    if signed:
        build_key.sign(package)
    else:
        (package / SIGNATURE_FILE).unlink()
    return package


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_packages_claims_about_its_own_verification_gate_nothing(stack: Stack, packages, tmp_path: Path, build_key,
                                                                  signed: bool):
    """Evidence that gates promotion comes only from the orchestrator's own records, never from meta.yaml."""
    env = dict(stack.env(), ORCH_ALLOW_UNSIGNED="0" if signed else "1")
    result = stack.cli("import", str(_claiming_package(packages, tmp_path, build_key, signed)), env=env)
    assert result.returncode == 0, result.stderr
    store = stack.store()
    attestation = store.attestation(2)
    assert attestation.status is VersionStatus.UNVERIFIED
    assert attestation.verification.golden == {} and attestation.shadow is None
    filed = read_meta(stack.repository / "classifier" / "2" / META_FILE)
    assert filed.verification.status is VersionStatus.UNVERIFIED and "shadow" not in filed.extra
    assert filed.filed_at != "2026-11-21T00:00:00+00:00"  # filed now, whatever the package said
    # Not a rollback target without --force,
    refused = stack.cli("rollback", "--to", "2", env=env)
    assert refused.returncode == 4 and "v2 is unverified, not verified" in refused.stderr
    # not promoted past a required shadow run,
    policy = stack.state / "classifier" / "policy.yaml"
    policy.write_text(policy.read_text() + "shadow:\n  require: true\n")
    refused = stack.cli("promote", "v2", env=env)
    assert refused.returncode == 4 and "v2 has no shadow run" in refused.stderr
    # and not kept resident by a hand edit: the guard drops it before Triton loads it.
    config = stack.repository / "classifier" / "config.pbtxt"
    config.write_text(config.read_text().replace("versions: [ 1 ]", "versions: [ 1, 2 ]"))
    assert stack.cli("reconcile", env=env).returncode == 0
    assert store.resident() == (1,) and stack.served_by_triton() == 1
    assert store.status(2) is VersionStatus.UNVERIFIED
