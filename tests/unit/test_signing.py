"""Package signatures: keys, signing folders and archives, and every way verification refuses."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import stat
import tarfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.trust import register
from orchestrator.delivery.package import unpacked, verify_package
from orchestrator.delivery.signing import (
    SIGNATURE_FILE,
    SIGNED_BY,
    generate_keypair,
    record_signer,
    sign_archive,
    sign_package,
    verify_signature,
)
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.errors import PackageRejected, UsageError
from orchestrator.sample import CONFIG, Variant, write_sample_package
from orchestrator.store.metafile import META_FILE, parse_meta
from orchestrator.store.modelconfig import parse_config

MODEL_CONFIG = parse_config(CONFIG)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_package(tmp_path_factory.mktemp("built") / "pkg", Variant.BETTER)


@pytest.fixture
def package(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "pkg"))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, str]:
    """A trusted-keys folder holding one public key, its private key, and its id."""
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    private = tmp_path / "builder.key"
    return private, trusted, generate_keypair(private, trusted / "builder.pub")


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: tuple[Path, Path, str]) -> None:
    private, trusted, key = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (trusted / "builder.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(key) == 16 and int(key, 16) >= 0


def test_keygen_refuses_to_overwrite_a_key(keys: tuple[Path, Path, str], tmp_path: Path) -> None:
    private, _, _ = keys
    before = private.read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        generate_keypair(private, tmp_path / "other.pub")
    assert private.read_bytes() == before


def test_signed_package_verifies_and_still_passes_verify_package(package: Path,
                                                                 keys: tuple[Path, Path, str]) -> None:
    private, trusted, key = keys
    assert sign_package(package, private) == key
    doc = json.loads((package / SIGNATURE_FILE).read_text())
    assert doc["algorithm"] == "ed25519" and doc["key_id"] == key
    assert len(base64.b64decode(doc["signature"])) == 64
    assert verify_signature(package, trusted) == key
    assert verify_signature(package, [trusted / "builder.pub"]) == key


def test_verify_package_accepts_the_signature_file(package: Path, keys: tuple[Path, Path, str]) -> None:
    sign_package(package, keys[0])
    verify_package(package, "pkg", "classifier", MODEL_CONFIG)


def test_unsigned_package_is_refused(package: Path, keys: tuple[Path, Path, str]) -> None:
    with pytest.raises(PackageRejected, match=r"unsigned: no meta\.yaml\.sig"):
        verify_signature(package, keys[1])


def test_package_signed_by_an_unknown_key_is_refused_naming_the_key(package: Path, keys: tuple[Path, Path, str],
                                                                    tmp_path: Path) -> None:
    stranger = generate_keypair(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    sign_package(package, tmp_path / "stranger.key")
    with pytest.raises(PackageRejected) as caught:
        verify_signature(package, keys[1])
    assert f"signed by unknown key {stranger}" in str(caught.value)
    assert f"trusted keys in {keys[1]}: {keys[2]}" in str(caught.value)
    with pytest.raises(PackageRejected, match=rf"unknown key {stranger} \(no trusted keys in"):
        verify_signature(package, tmp_path / "missing-folder")


def test_tampered_meta_is_refused(package: Path, keys: tuple[Path, Path, str]) -> None:
    private, trusted, key = keys
    sign_package(package, private)
    meta = package / META_FILE
    meta.write_text(meta.read_text().replace("target_device: cpu", "target_device: gpu"))
    with pytest.raises(PackageRejected, match=rf"signature by key {key} does not match meta\.yaml"):
        verify_signature(package, trusted)


def test_tampered_artifact_passes_the_signature_but_not_verify_package(package: Path,
                                                                       keys: tuple[Path, Path, str]) -> None:
    private, trusted, key = keys
    sign_package(package, private)
    (package / "model.py").write_text("print('replaced')\n")
    assert verify_signature(package, trusted) == key  # the manifest is intact ...
    (package / SIGNATURE_FILE).unlink()  # only so this passes before package.py exempts the file
    with pytest.raises(PackageRejected, match=r"'model\.py' sha256 .* does not match meta"):
        verify_package(package, "pkg", "classifier", MODEL_CONFIG)  # ... but it no longer describes the files


@pytest.mark.parametrize(("content", "reason"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"algorithm": "rsa", "key_id": "0" * 16, "signature": ""}).encode(), "algorithm 'rsa'"),
    (json.dumps({"algorithm": "ed25519", "key_id": "XYZ", "signature": ""}).encode(), "key_id must be"),
    (json.dumps({"algorithm": "ed25519", "key_id": "0" * 16, "signature": "@@@"}).encode(), "not base64"),
    (json.dumps({"algorithm": "ed25519", "key_id": "0" * 16, "signature": "AAAA"}).encode(), "is 3 bytes"),
])
def test_malformed_signature_file_is_refused(package: Path, keys: tuple[Path, Path, str], content: bytes,
                                             reason: str) -> None:
    (package / SIGNATURE_FILE).write_bytes(content)
    with pytest.raises(PackageRejected, match=r"meta\.yaml\.sig is malformed") as caught:
        verify_signature(package, keys[1])
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_oversized_or_linked_signature_or_manifest_is_refused_before_it_is_read(package: Path,
                                                                                 keys: tuple[Path, Path, str],
                                                                                 tmp_path: Path) -> None:
    (package / SIGNATURE_FILE).write_bytes(b" " * 5000)
    with pytest.raises(PackageRejected, match=r"meta\.yaml\.sig is 5,000 bytes \(limit 4,096\)"):
        verify_signature(package, keys[1])
    (package / SIGNATURE_FILE).unlink()
    (package / SIGNATURE_FILE).symlink_to("/dev/zero")
    with pytest.raises(PackageRejected, match=r"meta\.yaml\.sig is not a plain file"):
        verify_signature(package, keys[1])


def test_a_broken_trusted_key_file_is_an_error_not_ignored(package: Path, keys: tuple[Path, Path, str]) -> None:
    sign_package(package, keys[0])
    (keys[1] / "junk.pub").write_text("not a key")
    with pytest.raises(UsageError, match=r"junk\.pub is not a PEM public key"):
        verify_signature(package, keys[1])


def test_signing_refuses_a_package_whose_artifacts_do_not_match(package: Path, keys: tuple[Path, Path, str]) -> None:
    (package / "model.onnx").write_bytes(b"other")
    with pytest.raises(UsageError, match=r"'model\.onnx' does not match its sha256"):
        sign_package(package, keys[0])
    assert not (package / SIGNATURE_FILE).exists()


@pytest.mark.parametrize("nested", [True, False])
def test_sign_archive_adds_the_signature_beside_meta(package: Path, keys: tuple[Path, Path, str], tmp_path: Path,
                                                     nested: bool) -> None:
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(package, arcname="pkg" if nested else ".")
    assert sign_archive(archive, keys[0]) == keys[2]
    assert sign_archive(archive, keys[0]) == keys[2]  # re-signing replaces, never duplicates
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers()]
    assert sum(n.endswith(SIGNATURE_FILE) for n in names) == 1
    with unpacked(archive) as folder:
        assert verify_signature(folder, keys[1]) == keys[2]
        assert (folder / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()


def test_trust_policy_from_environment(tmp_path: Path) -> None:
    policy = TrustPolicy.from_environment(tmp_path, {})
    assert policy == TrustPolicy(tmp_path / "trusted_keys", allow_unsigned=False)
    policy = TrustPolicy.from_environment(tmp_path, {"ORCH_TRUSTED_KEYS": str(tmp_path / "k"),
                                                     "ORCH_ALLOW_UNSIGNED": "1"})
    assert policy == TrustPolicy(tmp_path / "k", allow_unsigned=True)
    with pytest.raises(UsageError, match="ORCH_ALLOW_UNSIGNED='maybe'"):
        TrustPolicy.from_environment(tmp_path, {"ORCH_ALLOW_UNSIGNED": "maybe"})


def test_trust_policy_refuses_unsigned_by_default(package: Path, keys: tuple[Path, Path, str]) -> None:
    with pytest.raises(PackageRejected, match=r"unsigned: no meta\.yaml\.sig; sign it with `orchestrate sign`"):
        TrustPolicy(keys[1]).check(package, "pkg")
    sign_package(package, keys[0])
    assert TrustPolicy(keys[1]).check(package, "pkg") == keys[2]


def test_allow_unsigned_warns_every_time_and_still_refuses_bad_signatures(
        package: Path, keys: tuple[Path, Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = TrustPolicy(keys[1], allow_unsigned=True)
    with caplog.at_level(logging.WARNING, logger="orchestrator.delivery.trust"):
        assert policy.check(package, "pkg-a") is None
        assert policy.check(package, "pkg-b") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" because ")[0] for w in warnings] == ["accepting UNSIGNED package pkg-a",
                                                           "accepting UNSIGNED package pkg-b"]
    assert all("ORCH_ALLOW_UNSIGNED" in w for w in warnings)
    generate_keypair(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    sign_package(package, tmp_path / "stranger.key")
    with pytest.raises(PackageRejected, match="unknown key"):
        policy.check(package, "pkg")


def test_record_signer_overrides_what_the_package_claims(package: Path) -> None:
    meta = parse_meta((package / META_FILE).read_text() + "signed_by: forged\nnote: kept\n")
    assert record_signer(meta, "0123456789abcdef").extra == {"note": "kept", SIGNED_BY: "0123456789abcdef"}
    assert record_signer(meta, None).extra == {"note": "kept"}


def test_cli_keygen_and_sign(package: Path, tmp_path: Path) -> None:
    @click.group()
    def app() -> None:
        pass

    register(app)
    runner = CliRunner()
    made = runner.invoke(app, ["keygen", "--out", str(tmp_path / "keys"), "--name", "ci"])
    assert made.exit_code == 0, made.output
    # Where each role's public half goes: packages on devices, release keys on the controller, controller keys
    # in the devices' fleet.yaml.
    for where in ("trusted keys folder", "release_keys folder", "controller_keys folder"):
        assert where in made.output
    signed = runner.invoke(app, ["sign", str(package), "--key", str(tmp_path / "keys" / "ci.key")])
    assert signed.exit_code == 0, signed.output
    assert verify_signature(package, tmp_path / "keys") in signed.output
    again = runner.invoke(app, ["keygen", "--out", str(tmp_path / "keys"), "--name", "ci"])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    missing = runner.invoke(app, ["sign", str(tmp_path / "nothing"), "--key", str(tmp_path / "keys" / "ci.key")])
    assert missing.exit_code == 2 and "not a package folder or archive" in missing.output
