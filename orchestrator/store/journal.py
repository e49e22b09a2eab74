"""The per-model journal file: append-only JSON lines, one ``core.journal.Record`` per line.

Appends are fsynced; a torn last line (power cut mid-write) is skipped on read and fenced off
by a newline on the next append.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator import faults
from orchestrator.core.journal import History, Record

JOURNAL_FILE = "version_history.log"


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
