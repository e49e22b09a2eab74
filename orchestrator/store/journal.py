"""The per-model journal file: append-only JSON lines, one ``core.journal.Record`` per line.

Appends are fsynced; a torn last line (power cut mid-write) is skipped on read and fenced off
by a newline on the next append.

Commands need only a summary of the past (``core.journal.JournalSummary``): ``summary()``
folds just the records appended since the summary cached beside the journal
(``version_history.log.index.json``: the offset it covers, the file it was taken of, and the
summary), so a command's cost does not grow with the history. The cache is only a cache:
missing, damaged or taken of another file, it is rebuilt from the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from orchestrator import faults
from orchestrator.core.journal import History, JournalSummary, Record

JOURNAL_FILE = "version_history.log"
INDEX_SUFFIX = ".index.json"
INDEX_EVERY_BYTES = 4096  # fold at most this much of the journal again before caching the summary
_MARK_BYTES = 256  # the journal's bytes just before the cached offset: a rewritten file does not match


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Record) -> Record:
        line = record.to_json() + "\n"
        faults.before_write(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(self.path):
                os.write(fd, b"\n")  # fence off a torn last record
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def read_since(self, offset: int) -> tuple[list[Record], int]:
        """Complete records appended after byte ``offset``, and the offset to continue from (for followers)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1  # a line still being written is left for the next call
        records = []
        for line in data[:end].decode(errors="replace").splitlines():
            try:
                records.append(Record.from_json(line))
            except (ValueError, KeyError, TypeError):
                continue
        return records, offset + end

    def summary(self) -> JournalSummary:
        """The summary of every record, reading only what was appended since the cached one."""
        offset, summary = self._cached()
        records, end = self.read_since(offset)
        summary = summary.add(*records)
        if end - offset >= INDEX_EVERY_BYTES:
            self._cache(end, summary)
        return summary

    def _identity(self, offset: int) -> dict[str, object] | None:
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if offset > stat.st_size:
                    return None
                handle.seek(max(0, offset - _MARK_BYTES))
                mark = hashlib.sha256(handle.read(min(offset, _MARK_BYTES))).hexdigest()
        except FileNotFoundError:
            return None
        return {"inode": stat.st_ino, "offset": offset, "mark": mark}

    def _cached(self) -> tuple[int, JournalSummary]:
        try:
            raw = json.loads(Path(str(self.path) + INDEX_SUFFIX).read_text())
            offset = int(raw["offset"])
            if self._identity(offset) == {k: raw[k] for k in ("inode", "offset", "mark")}:
                return offset, JournalSummary.from_dict(raw["summary"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0, JournalSummary()

    def _cache(self, offset: int, summary: JournalSummary) -> None:
        """Best effort, without fsync: a cache lost in a power cut is rebuilt from the journal."""
        identity = self._identity(offset)
        if identity is None:
            return
        index = Path(str(self.path) + INDEX_SUFFIX)
        temporary = index.with_name(f".{index.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps({**identity, "summary": summary.to_dict()}))
            os.replace(temporary, index)
        except OSError:
            temporary.unlink(missing_ok=True)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self) -> History:
        if not self.path.exists():
            return History((), 0)
        records: list[Record] = []
        skipped = 0
        with self.path.open("r", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    records.append(Record.from_json(line))
                except (ValueError, KeyError, TypeError):
                    skipped += 1
        return History(tuple(records), skipped)


def _ends_without_newline(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False
