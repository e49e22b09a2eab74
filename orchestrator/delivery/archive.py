"""What a package holds and how big it may be: shared by unpacking and signing."""

from __future__ import annotations

from orchestrator.store.metafile import META_FILE

SIGNATURE_FILE = META_FILE + ".sig"

# Limits for archives fetched over unreliable links; a package bigger than this is not a model.
MAX_ARCHIVE_FILES = 1000
MAX_UNPACKED_BYTES = 16 << 30
# Network weights barely compress (about 1.1x); a far higher ratio is a decompression bomb.
MAX_COMPRESSION_RATIO = 100
