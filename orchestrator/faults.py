"""Fault points for fault-injection tests. Only tests set these variables.

``ORCH_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that point,
exactly like a power cut or an OOM kill would. ``ORCH_FAIL_WRITE=<file name>`` makes the
next write of that file (or folder/file) fail as a full disk does (ENOSPC).
``ORCH_SHORT_WRITE=<file name>:<bytes>`` makes a journal append write only that many bytes, then
fail with ENOSPC, as a disk that fills up in the middle of a write does.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "ORCH_CRASH_AT"
ENV_WRITE = "ORCH_FAIL_WRITE"
ENV_SHORT = "ORCH_SHORT_WRITE"


def checkpoint(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def before_write(path: Path | str) -> None:
    """``ORCH_FAIL_WRITE`` names the file (``config.pbtxt``) or its folder too (``classifier/config.pbtxt``);
    several, separated by commas, fail together (a full state disk: the journal and the attestations)."""
    wanted = os.environ.get(ENV_WRITE)
    if not wanted:
        return
    path = Path(path)
    if {path.name, f"{path.parent.name}/{path.name}"} & set(wanted.split(",")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)", str(path))


def short_write(fd: int, data: memoryview, path: Path) -> None:
    """With ``ORCH_SHORT_WRITE`` naming ``path``: write the first bytes of ``data`` only, then fail."""
    wanted = os.environ.get(ENV_SHORT)
    if not wanted:
        return
    name, _, count = wanted.rpartition(":")
    if name == Path(path).name and len(data) > int(count):
        os.write(fd, data[:int(count)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected, mid-write)", str(path))
