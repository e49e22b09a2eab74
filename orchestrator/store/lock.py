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

LOCK_FILE = ".orchestrator.lock"


@contextmanager
def model_lock(folder: Path, model: str, timeout_s: float) -> Iterator[None]:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another command"
                    raise Busy(f"model {model!r} is busy ({holder}); waited {timeout_s:g}s, try again") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)
