"""Faults injected into real runs: a full disk, Triton killed mid-promote. Nothing may be lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sample import Variant, write_faulty_package
from orchestrator.store.metafile import VersionStatus
from orchestrator.store.repository import candidate_name

from .conftest import MODEL, ROOT, Stack

pytestmark = pytest.mark.triton


def _disk_full(stack: Stack, name: str, *args: str) -> subprocess.CompletedProcess:
    result = stack.cli(*args, env=stack.env() | {"ORCH_FAIL_WRITE": name})
    assert result.returncode == 11, (result.stdout, result.stderr)
    assert "No space left on device" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result


@pytest.mark.parametrize("name", ["artifact", "meta.yaml"])
def test_disk_full_while_importing_files_nothing(stack: Stack, packages, name: str):
    _disk_full(stack, name, "import", str(packages[Variant.BETTER]))
    store = stack.store()
    assert store.versions() == [1] and not store.staging_leftovers()
    assert store.journal.read().records[-1].result == "failed"
    again = stack.cli("import", str(packages[Variant.BETTER]))
    assert again.returncode == 0 and "filed v2" in again.stdout


def test_disk_full_while_writing_config_keeps_serving_and_the_next_promote_works(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    _disk_full(stack, f"{MODEL}/config.pbtxt", "promote", "v2")
    store = stack.store()
    assert store.served() == 1 and stack.served_by_triton() == 1
    assert store.journal.read().unfinished() is None
    assert store.status(2) is VersionStatus.VERIFIED  # it passed its checks; only the switch failed
    assert not (stack.repository / candidate_name(MODEL)).exists()
    again = stack.cli("promote", "v2")
    assert again.returncode == 0, again.stderr
    assert stack.served_by_triton() == 2


def test_disk_full_while_writing_the_candidate_entry_refuses_promote(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    _disk_full(stack, f"{MODEL}__candidate/config.pbtxt", "promote", "v2")
    store = stack.store()
    assert store.served() == 1 and stack.served_by_triton() == 1
    assert store.journal.read().records[-1].result == "failed"
    assert not (stack.repository / candidate_name(MODEL)).exists()
    assert stack.cli("promote", "v2").returncode == 0


def test_disk_full_while_writing_the_journal_fails_clearly(stack: Stack, packages):
    before = stack.snapshot()
    _disk_full(stack, "version_history.log", "import", str(packages[Variant.BETTER]))
    assert stack.store().versions() == [1]
    assert {k: v for k, v in stack.snapshot().items() if "version_history" not in k} == \
        {k: v for k, v in before.items() if "version_history" not in k}


def test_triton_killed_during_a_promote_then_restarted(stack: Stack, tmp_path: Path, build_key):
    # A slow candidate (50 ms a request) keeps the promote busy long enough to kill Triton under it.
    package = build_key.sign(write_faulty_package(tmp_path / "slow", "slow", after_requests=0))
    assert stack.cli("import", str(package)).returncode == 0
    promote = subprocess.Popen([sys.executable, "-m", "orchestrator", "--timeout", "3", "promote", "v2"],
                               env=stack.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = stack.store()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "candidate_loaded" not in store.journal.read().steps(
            (store.journal.read().unfinished() or store.journal.read().records[-1]).op):
        time.sleep(0.01)
    stack.server.kill()
    _, stderr = promote.communicate(timeout=60)
    assert promote.returncode in (8, 9), stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: Triton at {stack.server.url} is unreachable")
    stack.restart((MODEL,))
    assert stack.served_by_triton() == 1
    status = stack.cli("status")
    assert "serving v1" in status.stdout
    assert store.versions() == [1, 2]
    result = stack.cli("reconcile")
    assert result.returncode == 0, result.stderr
    assert store.journal.read().unfinished() is None
    assert not (stack.repository / candidate_name(MODEL)).exists()


def test_a_triton_that_accepts_but_never_answers_times_out_everywhere(stack: Stack, packages):
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold() -> None:  # a hung server: connections accepted, nothing ever sent back
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    env = stack.env() | {"ORCH_TRITON_URL": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    before = stack.snapshot()
    try:
        started = time.monotonic()
        status = stack.cli("--timeout", "1", "status", env=env)
        promote = stack.cli("--timeout", "1", "promote", "v2", env=env)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
    assert status.returncode == 9 and "Triton unreachable" in status.stdout  # printed, then the exit code says it
    assert promote.returncode == 9 and "no answer within 1 s" in promote.stderr
    assert elapsed < 30  # bounded by the timeouts, not hung
    assert stack.snapshot() == before
    assert stack.served_by_triton() == 1
