"""What a package holds and how big it may be: shared by unpacking and signing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.errors import PackageRejected
from orchestrator.store.metafile import META_FILE

SIGNATURE_FILE = META_FILE + ".sig"

# Limits for archives fetched over unreliable links; a package bigger than this is not a model.
MAX_ARCHIVE_FILES = 1000
MAX_UNPACKED_BYTES = 16 << 30
# Network weights barely compress (about 1.1x); a far higher ratio is a decompression bomb.
MAX_COMPRESSION_RATIO = 100
# Read before anything is trusted: a manifest lists a few files, a signature is one line.
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4096


def read_capped(path: Path, limit: int, label: str) -> bytes:
    """A package's small file, refused unless it is a plain file (not a link, a device, a pipe) of at most
    ``limit`` bytes; the size is checked before reading and again by the read itself."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise PackageRejected(label, f"no {path.name}") from None
    except OSError as exc:
        raise PackageRejected(label, f"cannot read {path.name}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise PackageRejected(label, f"{path.name} is not a plain file")
    if info.st_size > limit:
        raise PackageRejected(label, f"{path.name} is {info.st_size:,} bytes (limit {limit:,})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PackageRejected(label, f"cannot read {path.name}: {exc.strerror}") from exc
    if len(data) > limit:
        raise PackageRejected(label, f"{path.name} is over {limit:,} bytes")
    return data
