"""The watcher's command socket, over real Unix sockets: what it refuses, what it survives, where it lives.

The rollback itself is run against a real Triton in tests/integration/test_command_socket.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from orchestrator.daemons.command_socket import CommandSocket, NoDaemon, request_rollback, socket_path
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from tests.conftest import classifier_only

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    shutil.copytree(ROOT / "model_repository", tmp_path / "model_repository", ignore=classifier_only)
    (tmp_path / "state").mkdir()
    return Settings(tmp_path / "model_repository", state_dir=tmp_path / "state", triton_url="http://127.0.0.1:9",
                    actor="op")


def _exchange(path: Path, payload: bytes) -> dict[str, object]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(str(path))
    conn.sendall(payload)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    conn.close()
    return json.loads(data) if data else {}


def test_no_socket_means_no_daemon(settings: Settings) -> None:
    with pytest.raises(NoDaemon):
        request_rollback(settings, None, None, False, "r", timeout_s=5)


def test_a_stale_socket_file_means_no_daemon_and_the_next_watcher_replaces_it(settings: Settings) -> None:
    assert settings.state_dir is not None
    path = socket_path(settings.state_dir)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a watcher that was SIGKILLed
    with pytest.raises(NoDaemon):
        request_rollback(settings, None, None, False, "r", timeout_s=5)
    commands = CommandSocket(settings).start()
    assert commands is not None
    try:
        assert _exchange(path, b'{"op": "hello"}\n')["error"]["message"] == "unknown command 'hello'"  # type: ignore[index]
    finally:
        commands.stop()
    assert not path.exists()


def test_the_socket_is_private_to_its_user(settings: Settings) -> None:
    commands = CommandSocket(settings).start()
    assert commands is not None
    try:
        assert commands.path.stat().st_mode & 0o777 == 0o600
    finally:
        commands.stop()


def test_a_second_watcher_leaves_the_first_ones_socket_alone(settings: Settings) -> None:
    first = CommandSocket(settings).start()
    assert first is not None
    try:
        assert CommandSocket(settings).start() is None
        assert _exchange(first.path, b'{"op": "x"}\n')["ok"] is False  # the first still answers
    finally:
        first.stop()


def test_garbage_and_a_dropped_client_do_not_stop_it(settings: Settings) -> None:
    commands = CommandSocket(settings).start()
    assert commands is not None
    try:
        assert _exchange(commands.path, b"not json\n") == {}  # no answer to garbage, the connection closed
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(str(commands.path))
        half.sendall(b'{"op": "rollb')
        half.close()
        answer = _exchange(commands.path, json.dumps([1, 2]).encode() + b"\n")
        assert answer == {}
        assert _exchange(commands.path, b'{"op": "x"}\n')["ok"] is False
    finally:
        commands.stop()


def test_a_watcher_of_another_triton_or_repository_is_not_asked(settings: Settings, tmp_path: Path) -> None:
    commands = CommandSocket(settings).start()
    assert commands is not None
    try:
        from dataclasses import replace  # noqa: PLC0415

        with pytest.raises(NoDaemon, match="the watcher serves"):
            request_rollback(replace(settings, triton_url="http://127.0.0.1:8"), None, None, False, "r", 5)
    finally:
        commands.stop()


def test_the_daemons_refusal_is_the_commands_error_with_its_exit_code(settings: Settings) -> None:
    commands = CommandSocket(settings).start()
    assert commands is not None
    try:
        # The sample has only v1: the daemon's refusal ends the command as its own would (policy, exit 4).
        with pytest.raises(OrchestratorError) as refused:
            request_rollback(settings, "classifier", None, False, "r", timeout_s=30)
        assert refused.value.exit_code == 4 and "no verified version other than v1" in str(refused.value)
    finally:
        commands.stop()


def test_a_state_folder_too_deep_for_a_socket_path_gets_one_in_the_temp_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = socket_path(deep)
    assert len(os.fsencode(path)) < 100 and path.parent != deep
    assert socket_path(deep) == path  # the CLI and the daemon agree
    assert socket_path(tmp_path) == tmp_path.resolve() / "orchestrate.sock"


def test_a_socket_path_it_cannot_take_leaves_the_watcher_without_commands(settings: Settings) -> None:
    assert settings.state_dir is not None
    path = socket_path(settings.state_dir)
    path.mkdir()  # something that is not a socket, and cannot be unlinked as one
    (path / "keep").write_text("x")
    assert CommandSocket(settings).start() is None
    assert (path / "keep").read_text() == "x"
    with pytest.raises(NoDaemon):  # and the CLI does the rollback itself
        request_rollback(settings, None, None, False, "r", timeout_s=5)
