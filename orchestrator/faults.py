"""Crash points for fault-injection tests.

``ORCH_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that point,
exactly like a power cut or an OOM kill would. Only tests set it.
"""

from __future__ import annotations

import os
import signal

ENV = "ORCH_CRASH_AT"


def checkpoint(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
