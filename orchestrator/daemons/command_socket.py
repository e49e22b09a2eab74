"""The watcher's command socket: ``orchestrate rollback`` done by the running daemon.

An operator's rollback is an emergency. Run in its own process it first pays for Python and the
orchestrator's imports (about 0.3 s idle, twice that on a busy 2-core device) before the ~50 ms
switch. ``orchestrate watch`` has all of that loaded and a connection to Triton open, so it
listens on a Unix socket in the state folder (mode 0600, the peer's uid checked) and the CLI
hands it the rollback when it is there: one JSON line each way. The daemon runs the same
``Orchestrator.rollback`` under the model's lock, with the operator's actor in the journal.

The CLI falls back to doing it itself when no daemon listens (no socket, a stale one, a daemon
for another Triton). Once a request was sent it never falls back: the rollback may be under way,
and doing it twice would be wrong; it reports the daemon's answer, or that none came.

Importing this module costs only ``socket`` and ``json``: the client side runs in the CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.settings import Settings
    from orchestrator.store.backlog import WriteBacklog

log = logging.getLogger(__name__)

SOCKET_NAME = "orchestrate.sock"
_MAX_PATH = 100  # sun_path holds 108 bytes on Linux
_MAX_LINE = 1 << 16


def socket_path(state_dir: Path) -> Path:
    """In the state folder; where that path is too long for a socket, a name in the temp folder derived from it."""
    path = state_dir.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) < _MAX_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(state_dir.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"orchestrate-{os.getuid()}-{digest}.sock"


class NoDaemon(Exception):
    """Nothing listens for this state folder and Triton: the command runs in its own process."""


def request_rollback(settings: Settings, model: str | None, to: int | None, force: bool, reason: str,
                     timeout_s: float) -> dict[str, Any]:
    """The daemon's SwitchResult as a dict; its error re-raised as the same type; NoDaemon when none listens."""
    assert settings.state_dir is not None  # Settings fills it in
    path = socket_path(settings.state_dir)
    if not path.exists():
        raise NoDaemon(str(path))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(1.0)
        try:
            conn.connect(str(path))
        except OSError as exc:  # a socket left by a daemon that died: nobody listens
            raise NoDaemon(f"{path}: {exc}") from exc
        request = {"op": "rollback", "model": model, "to": to, "force": force, "reason": reason,
                   "actor": settings.actor, "triton_url": settings.triton_url,
                   "repository": str(settings.repository.resolve())}
        conn.sendall(json.dumps(request).encode() + b"\n")
        conn.settimeout(timeout_s)
        try:
            answer = _read_line(conn)
        except (OSError, ValueError) as exc:
            raise OrchestratorError(f"the watcher took the rollback but gave no answer ({exc}): run `orchestrate "
                                    f"status` to see whether it happened") from exc
    finally:
        conn.close()
    if answer.get("mismatch"):
        raise NoDaemon(str(answer.get("mismatch")))
    if answer.get("ok"):
        log.info("rollback done by the watcher listening on %s", path)
        return dict(answer["result"])
    error = answer.get("error") or {}
    raise _error_of(str(error.get("message", "the watcher refused the rollback")), int(error.get("exit_code", 1)))


def _error_of(message: str, exit_code: int) -> OrchestratorError:
    """The daemon's error as it would have ended the command here: its one line and its exit code."""
    error = OrchestratorError(message)
    error.exit_code = exit_code
    return error


def _read_line(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
        if len(data) > _MAX_LINE:
            raise ValueError("answer too long")
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return raw


class CommandSocket:
    """Serves rollbacks for one state folder; each request on its own thread and its own Orchestrator
    (a Triton connection is not shared between threads)."""

    def __init__(self, settings: Settings, backlog: WriteBacklog | None = None) -> None:
        assert settings.state_dir is not None
        self.settings = settings
        self.backlog = backlog  # the daemon's: a rollback asked for here goes on when the journal cannot be written
        self.path = socket_path(settings.state_dir)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="command-socket", daemon=True)

    def start(self) -> CommandSocket | None:
        """Listening; None when another live watcher already takes this state folder's commands."""
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(self.path))
            except OSError:
                try:
                    self.path.unlink(missing_ok=True)  # a leftover of a watcher that died
                except OSError as exc:  # not a socket we may remove (a folder, another user's file)
                    log.error("cannot take commands on %s (%s); `orchestrate rollback` runs in its own process",
                              self.path, exc.strerror or exc)
                    self.server.close()
                    return None
            else:
                log.warning("another watcher takes commands on %s; this one does not", self.path)
                self.server.close()
                return None
            finally:
                probe.close()
        old_umask = os.umask(0o177)
        try:
            self.server.bind(str(self.path))
            self.server.listen(8)
        except OSError as exc:  # a read-only or full state folder: the watcher watches all the same
            log.error("cannot take commands on %s (%s); `orchestrate rollback` runs in its own process", self.path,
                      exc.strerror or exc)
            self.server.close()
            return None
        finally:
            os.umask(old_umask)
        self.server.settimeout(0.5)
        self.thread.start()
        log.warning("rollbacks taken on %s", self.path)
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.server.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self.stopped.is_set():
                    log.error("command socket: %s", exc)
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5.0)
            if not _same_user(conn):
                _send(conn, {"ok": False, "error": {"type": "UsageError", "exit_code": 2,
                                                     "message": "the watcher takes commands from its own user only"}})
                return
            try:
                request = _read_line(conn)
            except (OSError, ValueError) as exc:
                log.warning("command socket: unreadable request: %s", exc)
                return
            conn.settimeout(None)
            _send(conn, self.answer(request))
        except OSError as exc:
            log.warning("command socket: %s", exc)
        finally:
            conn.close()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """What the daemon replies to one request (a bad request is an error, never a crash)."""
        if request.get("op") != "rollback":
            return {"ok": False, "error": {"type": "UsageError", "exit_code": 2,
                                           "message": f"unknown command {request.get('op')!r}"}}
        if request.get("triton_url") != self.settings.triton_url or \
                request.get("repository") != str(self.settings.repository.resolve()):
            return {"mismatch": f"the watcher serves {self.settings.repository} on {self.settings.triton_url}"}
        try:
            from orchestrator.usecases.orchestrator import Orchestrator  # noqa: PLC0415 - loaded already

            to = request.get("to")
            orch = Orchestrator(replace(self.settings, actor=str(request.get("actor") or self.settings.actor)))
            orch.backlog = self.backlog
            try:
                result = orch.rollback(request.get("model") or None, int(to) if to is not None else None,
                                       force=bool(request.get("force")),
                                       reason=str(request.get("reason") or "requested by operator"))
            finally:
                orch.triton.close()
        except OrchestratorError as exc:
            return {"ok": False, "error": {"type": type(exc).__name__, "exit_code": exc.exit_code,
                                           "message": str(exc)}}
        except (OSError, ValueError, TypeError) as exc:
            log.error("command socket: rollback failed: %s", exc, exc_info=True)
            return {"ok": False, "error": {"type": "OrchestratorError", "exit_code": 1,
                                           "message": f"the watcher's rollback failed: {exc}"}}
        return {"ok": True, "result": result.__dict__}


def _same_user(conn: socket.socket) -> bool:
    """SO_PEERCRED: the peer runs as this process's user, or as root."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
