"""Reads done again only when their files changed: one ``stat`` per file (mtime, size, inode) stands in
for reading and parsing it.

Every writer of the repository's and the state's files replaces them (a new inode, and a new mtime on
the folder it renames into) or appends (a new size); a hand edit in place that keeps the size changes
the mtime, unless it lands within the file system's clock tick of the look, so a file modified less than
``RACY_NS`` before it was looked at is read again next time (as git treats a "racy" index).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

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
