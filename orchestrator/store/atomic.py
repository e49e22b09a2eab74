"""Crash-safe file writes: write a temporary sibling, fsync it, rename, fsync the folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator import faults


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` so that a reader (or a crash) sees the old or the new content, never a mix."""
    payload = data.encode() if isinstance(data, str) else data
    faults.before_write(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
