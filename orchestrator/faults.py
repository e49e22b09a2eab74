"""Fault points for fault-injection tests. Only tests set these variables.

``ORCH_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that point,
exactly like a power cut or an OOM kill would. ``ORCH_FAIL_WRITE=<file name>`` makes the
next write of that file fail as a full disk does (ENOSPC).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ORCH_CRASH_AT"
ENV_WRITE = "ORCH_FAIL_WRITE"


def checkpoint(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def before_write(name: str) -> None:
    if os.environ.get(ENV_WRITE) == name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)", name)
