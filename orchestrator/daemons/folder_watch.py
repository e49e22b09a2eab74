"""Waking up when a file is written into a folder (Linux inotify, through libc), instead of polling it.

The shadow worker reads Triton's trace files as they come. Polling the folder often costs CPU
on production's cores while nothing comes; polling seldom delivers the traces in bursts, and a
candidate replayed in bursts after longer pauses answers slower (its backend idles longer) than
production's steady traffic. Woken by the kernel, the worker reads each file when Triton closes
it and costs nothing in between. Where inotify is missing (not Linux, a network file system, no
watches left) ``wait`` sleeps the timeout instead, and the caller polls.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import time
from pathlib import Path

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080


class FolderWatch:
    def __init__(self, folder: Path) -> None:
        self._fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            if libc.inotify_add_watch(fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
                error = ctypes.get_errno()
                os.close(fd)
                raise OSError(error, f"cannot watch {folder}")
            self._fd = fd
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.info("polling %s: %s", folder, exc)

    @property
    def watching(self) -> bool:
        return self._fd >= 0

    def wait(self, timeout_s: float) -> None:
        """Until a file was written into the folder since the last call, or ``timeout_s``."""
        if self._fd < 0:
            time.sleep(timeout_s)
            return
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if ready:
            try:
                while os.read(self._fd, 65536):  # the events themselves say nothing the folder's listing does not
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
