"""Crash-safe file writes: write a temporary sibling, fsync it, rename, fsync the folder.

The files the orchestrator writes are its own: a symbolic link planted where one of them goes
(config.pbtxt, the journal, a lock, an attestation) is refused with its path, never followed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from orchestrator import faults
from orchestrator.errors import RepositoryCorrupt


def planted_link(path: Path) -> RepositoryCorrupt:
    return RepositoryCorrupt(f"{path} is a symbolic link; the orchestrator writes only its own files there: "
                             f"remove the link (and find out who put it there)")


def open_own(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses to follow a link at ``path``."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise planted_link(path) from exc
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error (fsynced, renamed, the
    folder fsynced); on any error the temporary sibling is removed and ``path`` is as it was."""
    if path.is_symlink():
        raise planted_link(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` so that a reader (or a crash) sees the old or the new content, never a mix."""
    payload = data.encode() if isinstance(data, str) else data
    faults.before_write(path)
    with atomic_file(path) as handle:
        handle.write(payload)
