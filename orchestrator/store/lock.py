"""One command at a time per model: an advisory ``flock`` on a file in the model's folder.

The kernel drops the lock when its holder dies, so a crashed command never leaves the
model locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import Busy
from orchestrator.store.atomic import open_own

LOCK_FILE = ".orchestrator.lock"


def _try_lock(fd: int, holder: str) -> bool:
    """Take the exclusive lock without waiting and say who holds it in the file; False when another has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    return True


@contextmanager
def model_lock(folder: Path, model: str, timeout_s: float) -> Iterator[None]:
    fd = open_own(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd, f"pid {os.getpid()}"):
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another command"
                raise Busy(f"model {model!r} is busy ({holder}); waited {timeout_s:g}s, try again") from None
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def held_by_another(folder: Path) -> bool:
    """Whether a command holds the model now (a switch may be half done): a shared lock tried, not waited for."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock taken, if any
    return False


WATCH_LOCK_FILE = ".watch.lock"


class WatchLock:
    """One watcher per model: held for the daemon's life, so that two daemons never both act on a model.

    ``acquire`` does not wait: a second daemon reports who holds it and tries again on its next tick.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / WATCH_LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        if self.fd is not None:
            return True
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
        if not _try_lock(fd, f"watch pid {os.getpid()}"):
            os.close(fd)
            return False
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip() or "another watcher"
        except OSError:
            return "another watcher"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
