"""What a watcher reads from disk every tick, read again only when it changed.

Each tick looks at config.pbtxt and the model folder (the resident versions), labels.json,
paused.json and the journal. Between switches none of them changes, so one ``stat`` per file
(mtime, size, inode) stands in for reading and parsing it: parsing config.pbtxt with protobuf's
text format alone took a quarter of the watcher's CPU. Every writer of these files replaces them
(a new inode) or appends (a new size); a hand edit in place that keeps the size changes the
mtime, unless it lands within the file system's clock tick of the look, so a file modified less
than ``RACY_NS`` before it was looked at is read again next time (as git treats a "racy" index).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from orchestrator.store.labels import LABELS_FILE, read_labels
from orchestrator.store.modelconfig import CONFIG_FILE
from orchestrator.store.pause import PAUSE_FILE, pause_in_effect
from orchestrator.store.repository import ModelStore

T = TypeVar("T")
Key = tuple[int, int, int] | None  # (st_mtime_ns, st_size, st_ino); None: no such file
RACY_NS = 100_000_000  # well above a coarse file-system clock's tick (1-10 ms)
_UNKNOWN: Key = (-1, -1, -1)  # a stat that failed otherwise: never trusted


def key_of(path: Path) -> Key:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return _UNKNOWN
    return st.st_mtime_ns, st.st_size, st.st_ino


class Keys:
    """Whether files changed since the last ``changed()`` that said so."""

    def __init__(self, *paths: Path, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.paths, self.clock_ns = paths, clock_ns
        self.keys: tuple[Key, ...] | None = None  # None: never looked
        self.trusted = False

    def changed(self) -> tuple[bool, tuple[Key, ...]]:
        """(changed, the keys now); the caller ``remember``s the keys once it has read the files."""
        keys = tuple(key_of(path) for path in self.paths)
        return not (self.trusted and keys == self.keys), keys

    def remember(self, keys: tuple[Key, ...]) -> None:
        now = self.clock_ns()
        self.keys = keys
        self.trusted = all(k is None or (k != _UNKNOWN and now - k[0] > RACY_NS) for k in keys)


class Cached(Generic[T]):
    """``read()``, called again only when one of ``paths`` changed; a read that raises is not cached."""

    def __init__(self, read: Callable[[], T], *paths: Path) -> None:
        self.read = read
        self.keys = Keys(*paths)
        self.value: T | None = None

    def __call__(self) -> T:
        changed, keys = self.keys.changed()  # stat before read: a write in between is seen next time
        if changed:
            self.value = self.read()
            self.keys.remember(keys)
        return self.value  # type: ignore[return-value]


class WatchedFiles:
    """One model's per-tick reads: the same answers as the store's, from a stat when nothing changed."""

    def __init__(self, store: ModelStore) -> None:
        self.resident = Cached(store.resident, store.folder / CONFIG_FILE, store.folder)
        self.labels = Cached(lambda: read_labels(store.state), store.state / LABELS_FILE)
        self.pause = Cached(lambda: pause_in_effect(store.state), store.state / PAUSE_FILE)
        self._journal = Keys(store.journal.path)

    def journal_changed(self) -> bool:
        """Whether the journal's live file changed since the last call that said so (an append, a rotation)."""
        changed, keys = self._journal.changed()
        if changed:
            self._journal.remember(keys)
        return changed
