"""Nothing unverified is parsed: the signature over meta.yaml's bytes is checked first, small files are capped
before they are read, version numbers are plain and bounded, and the device's own disk errors keep the package."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from orchestrator.delivery.archive import MAX_MANIFEST_BYTES, SIGNATURE_FILE
from orchestrator.errors import PackageRejected, WriteFailed
from orchestrator.sample import Variant

from .conftest import MODEL, ROOT, Env


def _copy(env: Env, name: str, variant: Variant = Variant.BETTER) -> Path:
    folder = env.tmp / name
    shutil.copytree(env.packages[variant], folder)
    return folder


def _cli(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(ORCH_REPOSITORY=str(env.repository), ORCH_STATE_DIR=str(env.state), **extra)
    # A hang would be the bug: the timeout turns it into a failure, not a stuck suite.
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_manifest_that_is_a_link_to_dev_zero_is_refused_at_once(env: Env) -> None:
    package = _copy(env, "zero")
    (package / "meta.yaml").unlink()
    (package / "meta.yaml").symlink_to("/dev/zero")
    done = _cli(env, "import", str(package))
    assert done.returncode == 3 and "meta.yaml is not a plain file" in done.stderr
    (package / SIGNATURE_FILE).unlink()  # unsigned, signatures required: refused before meta.yaml is touched
    done = _cli(env, "import", str(package))
    assert done.returncode == 3 and "unsigned" in done.stderr
    done = _cli(env, "import", str(package), ORCH_ALLOW_UNSIGNED="1")  # development mode reads it: capped
    assert done.returncode == 3 and "meta.yaml is not a plain file" in done.stderr
    assert env.store().versions() == [1]


def test_a_padded_manifest_is_refused_by_its_size_before_it_is_parsed(env: Env) -> None:
    package = _copy(env, "padded")
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text() + "# " + "x" * (MAX_MANIFEST_BYTES + 10) + "\n")
    with pytest.raises(PackageRejected, match=r"meta\.yaml is [\d,]+ bytes \(limit 1,048,576\)"):
        env.orchestrator().import_package(package)
    assert env.store().versions() == [1]


def test_a_signed_manifest_with_an_alias_bomb_is_refused(env: Env) -> None:
    package = _copy(env, "bomb")
    meta = package / "meta.yaml"
    bomb = "lol0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"lol{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9))
    meta.write_text(meta.read_text() + bomb)
    (package / SIGNATURE_FILE).unlink()
    env.monkeypatch.setenv("ORCH_ALLOW_UNSIGNED", "1")  # `sign` refuses such a manifest too
    with pytest.raises(PackageRejected, match="YAML aliases"):
        env.orchestrator().import_package(package)


@pytest.mark.parametrize(("written", "says"), [("010", "plain decimal"), ("0x10", "plain decimal"),
                                               ("999999999999999999", "from 1 to 999,999,999")])
def test_version_numbers_are_plain_and_bounded(env: Env, written: str, says: str) -> None:
    package = _copy(env, f"v{written}")
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text().replace(f"model: {MODEL}\n", f"model: {MODEL}\nversion: {written}\n", 1))
    (package / SIGNATURE_FILE).unlink()
    env.monkeypatch.setenv("ORCH_ALLOW_UNSIGNED", "1")
    with pytest.raises(PackageRejected, match=says):
        env.orchestrator().import_package(package)
    assert env.store().versions() == [1]


def test_a_version_far_past_the_highest_is_refused_unless_allowed(env: Env) -> None:
    package = _copy(env, "far")
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text().replace(f"model: {MODEL}\n", f"model: {MODEL}\nversion: 5000\n", 1))
    env.build_key.sign(package)
    with pytest.raises(PackageRejected, match=r"version 5000, more than 1000 past v1 \(ORCH_MAX_VERSION_JUMP"):
        env.orchestrator().import_package(package)
    assert env.orchestrator(max_version_jump=10_000).import_package(package).version == 5000
    assert env.store().versions() == [1, 5000]


def test_a_full_disk_while_unpacking_keeps_the_package_and_says_so_injected_enospc(env: Env) -> None:
    inbox = env.tmp / "inbox"
    inbox.mkdir()
    archive = inbox / "good.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env.packages[Variant.BETTER], arcname="pkg")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/orch-unpack")

    env.monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(WriteFailed, match="No space left on device"):
        env.orchestrator().import_package(archive)
    from orchestrator.daemons.watch import Watch  # noqa: PLC0415

    watch = Watch(env.settings(), None, "http://127.0.0.1:9/metrics", triton=env.twin, clock=env.clock,
                  inbox=inbox, inbox_quiet_s=0.0)
    notes = watch.scan_inbox()
    assert "could not file good.tar.gz" in notes[0]
    assert archive.exists() and not (inbox / "rejected").exists()  # kept for the next scan
    env.monkeypatch.undo()
    assert env.orchestrator().import_package(archive).version == 2
