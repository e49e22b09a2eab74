"""Writes the disk refused, kept in memory and made again later, in their order.

For the watcher, whose rollback must not wait for a full state disk: serving comes first, the journal
and the attestations catch up when the disk allows. Only the disk's "cannot take it" errors are kept
(full, over quota, read-only, I/O error); any other error is the caller's. Commands have no backlog:
a process that ends would lose what it holds, so their writes fail as before.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFERRABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


@dataclass(frozen=True)
class _Pending:
    what: str
    write: Callable[[], object]
    since: float


class WriteBacklog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._pending: list[_Pending] = []
        self._clock = clock
        # The watcher's ticks and the command socket's rollbacks write from different threads.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_s(self) -> float:
        """How long the oldest waiting write has waited (0 when none waits)."""
        with self._lock:
            return self._clock() - self._pending[0].since if self._pending else 0.0

    def attempt(self, what: str, write: Callable[[], T], later: Callable[[], object] | None = None) -> T | None:
        """``write()``'s result, or None when the disk refused it (or earlier writes still wait) and it was
        kept: ``later`` (default ``write``) is what ``flush`` makes of it then."""
        with self._lock:
            if self._pending and not self.flush():
                self._keep(what, later or write, "earlier writes still wait")
                return None
            try:
                return write()
            except OSError as exc:
                if exc.errno not in DEFERRABLE:
                    raise
                self._keep(what, later or write, exc.strerror or str(exc))
                return None

    def flush(self) -> bool:
        """Make the waiting writes in order, stopping at the first the disk still refuses; True when none
        is left. An error that is not the disk's is raised (the write stays first in line)."""
        with self._lock:
            while self._pending:
                pending = self._pending[0]
                try:
                    pending.write()
                except OSError as exc:
                    if exc.errno not in DEFERRABLE:
                        raise
                    return False
                self._pending.pop(0)
                log.warning("wrote %s, %.1f s late", pending.what, self._clock() - pending.since)
            return True

    def _keep(self, what: str, write: Callable[[], object], why: str) -> None:
        self._pending.append(_Pending(what, write, self._clock()))
        log.error("cannot write %s (%s): kept to write later (%d waiting)", what, why, len(self._pending))
