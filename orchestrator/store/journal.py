"""The per-model journal: append-only JSON lines, one ``core.journal.Record`` per line, rotated by size.

Files, beside each other in the model's state folder (``version_history.log`` below is the path given):

    version_history.log                     the live file: appends land here
    version_history.log.<n>.gz              segment n (1, 2, ... oldest lowest): a former live file, gzipped
    version_history.log.<n>                 segment n before its compression finished (a crash can leave it)
    version_history.log.<n>.summary.json    checkpoint: the ``JournalSummary`` of segments 1..n
    version_history.log.index.json          the summary cached for the live file (a cache only)
    version_history.log.lock                flock held for append + rotate

Appends are fsynced; a torn last line (power cut mid-write) is skipped on read and fenced off by a
newline on the next append. Writers (CLI commands, the watcher) take the lock, so no record lands in
a file being rotated away. An append that would leave the live file above ``max_bytes`` rotates it
first: rename it to segment n, write checkpoint n, gzip it to a temporary, fsync, rename to
``<n>.gz``, then remove the plain segment, fsyncing the folder after each rename. Each step is
atomic and readers take the ``.gz`` when both forms exist, so a crash anywhere leaves every record
readable exactly once; the next append finishes what the crash interrupted (``_repair``).

Readers take no lock: they open the live file, find the segments, and start again if the live file
was rotated meanwhile. ``read()`` returns every record of every segment, then the live file.
Followers keep a ``Cursor`` (``cursor()``, ``read_since``), which survives rotations.

Commands need only a summary of the past: ``summary()`` is the latest checkpoint plus the records
appended since, folded from the live file's cached summary on, so a command's cost does not grow
with the history. Checkpoints and the cache that are missing or damaged are rebuilt from the files.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator import faults
from orchestrator.core.journal import History, JournalSummary, Record
from orchestrator.store.atomic import atomic_file, fsync_dir, open_own, write_atomic

JOURNAL_FILE = "version_history.log"
MAX_BYTES = 8 * 1024 * 1024  # the live file is rotated before an append would take it above this
INDEX_SUFFIX = ".index.json"
CHECKPOINT_SUFFIX = ".summary.json"
LOCK_SUFFIX = ".lock"
INDEX_EVERY_BYTES = 4096  # fold at most this much of the journal again before caching the summary
_MARK_BYTES = 256  # the journal's bytes just before the cached offset: a rewritten file does not match
_GZIP_LEVEL = 6


@dataclass(frozen=True)
class Cursor:
    """A position for followers: ``offset`` bytes into the file that followed the first ``segment``
    segments (the live file then, perhaps a segment by now)."""

    segment: int
    offset: int


class Journal:
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._repaired = False  # whether this instance has finished rotations a crash interrupted
        self._last_seen = 0  # segments are never removed: look for newer ones from here

    # --- writing ------------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        line = (record.to_json() + "\n").encode()
        faults.before_write(self.path)
        with self._locked():
            if not self._repaired:
                self._repair()
                self._repaired = True
            fence = _ends_without_newline(self.path)  # a torn last record is fenced off by a newline
            size = self.size()
            if size and size + fence + len(line) > self.max_bytes:
                self._rotate()
                fence = False  # a segment's end ends its last line
            existed = self.path.exists()
            fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                if fence:
                    os.write(fd, b"\n")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if not existed:
                fsync_dir(self.path.parent)  # a new live file's name must survive a power cut too
        return record

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_own(Path(str(self.path) + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _rotate(self) -> None:
        """Under the lock: the live file becomes the next segment, with its checkpoint, then gzipped."""
        self._repair()  # a long-lived writer (the watcher) also finishes what another process left
        summary, cursor = self._fold()
        number = cursor.segment + 1
        os.rename(self.path, self._plain(number))
        fsync_dir(self.path.parent)
        faults.checkpoint("journal:rotated")
        rest, _ = self.read_since(cursor)  # an unterminated last line is final now that it is a segment
        self._write_checkpoint(number, summary.add(*rest))
        faults.checkpoint("journal:checkpointed")
        self._compress(number)

    def _compress(self, number: int) -> None:
        plain, packed = self._plain(number), self._packed(number)
        with atomic_file(packed) as raw, plain.open("rb") as source, gzip.GzipFile(
                filename=plain.name, mode="wb", compresslevel=_GZIP_LEVEL, fileobj=raw, mtime=0) as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        faults.checkpoint("journal:compressed")
        plain.unlink()
        fsync_dir(self.path.parent)

    def _repair(self) -> None:
        """Under the lock: finish the rotation a crash interrupted (cheap when there is none)."""
        plain, packed = set(), set()
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                if (found := _segment_match(entry.name, self.path.name)) is not None:
                    (packed if found.group(2) else plain).add(int(found.group(1)))
                elif entry.name.startswith(f".{self.path.name}.") and entry.name.endswith(".tmp") \
                        and ".gz." in entry.name:
                    Path(entry.path).unlink(missing_ok=True)  # a compression cut short; only rotation writes these
        for number in sorted(plain):
            if number in packed:  # the .gz was fsynced before its rename: complete
                self._plain(number).unlink()
                fsync_dir(self.path.parent)
            else:
                self._compress(number)
        last = self._last_segment()
        if last and self._load_checkpoint(last) is None:
            self._write_checkpoint(last, self._rebuild_checkpoint(last))

    # --- reading ------------------------------------------------------------------------
    def size(self) -> int:
        """The live file's size in bytes."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self) -> History:
        """Every record of every segment in order, then the live file's."""
        records: list[Record] = []
        skipped = 0
        with self._view() as (last, live):
            for number in range(1, last + 1):
                found, bad = _parse(self._read_segment(number))
                records += found
                skipped += bad
            if live is not None:
                found, bad = _parse(live.read())
                records += found
                skipped += bad
        return History(tuple(records), skipped)

    def cursor(self) -> Cursor:
        """The end of the journal, for a follower to start from (a line being written is after it)."""
        with self._view() as (last, live):
            return Cursor(last, _complete_end(live) if live is not None else 0)

    def read_since(self, cursor: Cursor) -> tuple[list[Record], Cursor]:
        """Complete records appended after ``cursor`` (those rotated into segments since included), and
        the cursor to continue from. A cursor past the end (the journal was replaced) restarts at the end."""
        with self._view() as (last, live):
            size = os.fstat(live.fileno()).st_size if live is not None else 0
            if cursor.segment > last or (cursor.segment == last and cursor.offset > size):
                return [], Cursor(last, _complete_end(live) if live is not None else 0)
            records: list[Record] = []
            start = cursor.offset
            if cursor.segment < last:
                records += _parse(self._read_segment(cursor.segment + 1, start))[0]
                for number in range(cursor.segment + 2, last + 1):
                    records += _parse(self._read_segment(number))[0]
                start = 0
            if live is None:
                return records, Cursor(last, 0)
            live.seek(start)
            data = live.read()
        end = data.rfind(b"\n") + 1  # a line still being written is left for the next call
        return records + _parse(data[:end])[0], Cursor(last, start + end)

    @contextmanager
    def _view(self) -> Iterator[tuple[int, BinaryIO | None]]:
        """The number of segments and the live file that follows them, taken together: if a rotation
        renames the live file between the two looks, look again."""
        while True:
            try:
                live: BinaryIO | None = self.path.open("rb")
            except FileNotFoundError:
                live = None
            inode = os.fstat(live.fileno()).st_ino if live is not None else None
            last = self._last_segment()
            if self._inode() == inode:
                break
            if live is not None:
                live.close()
        try:
            yield last, live
        finally:
            if live is not None:
                live.close()

    def _inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return None

    def _last_segment(self) -> int:
        if not self._last_seen:
            try:
                with os.scandir(self.path.parent) as entries:
                    numbers = [int(m.group(1)) for e in entries if (m := _segment_match(e.name, self.path.name))]
            except FileNotFoundError:
                return 0  # no folder, no journal
            self._last_seen = max(numbers, default=0)
        # The plain name first: it is removed only once the .gz exists, so one of the two is seen.
        while self._plain(self._last_seen + 1).exists() or self._packed(self._last_seen + 1).exists():
            self._last_seen += 1
        return self._last_seen

    def _plain(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _packed(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}.gz")

    def _read_segment(self, number: int, offset: int = 0) -> bytes:
        """Segment ``number`` from byte ``offset``: the .gz when there is one; a plain one compressed
        and removed while we look has its .gz by then, hence the second try."""
        packed = self._packed(number)
        for path in (packed, self._plain(number), packed):
            try:
                with gzip.open(path, "rb") if path is packed else path.open("rb") as handle:
                    handle.seek(offset)
                    return handle.read()
            except FileNotFoundError:
                continue
        raise FileNotFoundError(errno.ENOENT, f"journal segment {number} is missing", str(packed))

    # --- the summary --------------------------------------------------------------------
    def summary(self) -> JournalSummary:
        """The summary of every record: the latest checkpoint and the live file's records since the cached summary."""
        return self._fold()[0]

    def _fold(self) -> tuple[JournalSummary, Cursor]:
        start, summary = self._cached()
        records, end = self.read_since(start)
        summary = summary.add(*records)
        if end.segment != start.segment or end.offset - start.offset >= INDEX_EVERY_BYTES:
            self._cache(end, summary)
        return summary, end

    def _cached(self) -> tuple[Cursor, JournalSummary]:
        """Where folding starts: the live file's cached summary if it is of this live file, else the
        latest checkpoint. A rotation meanwhile makes neither wrong: ``read_since`` follows it."""
        last = self._last_segment()
        try:
            raw = json.loads(Path(str(self.path) + INDEX_SUFFIX).read_text())
            offset = int(raw["offset"])
            if int(raw["segment"]) == last and \
                    self._identity(offset) == {k: raw[k] for k in ("inode", "offset", "mark")}:
                return Cursor(last, offset), JournalSummary.from_dict(raw["summary"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return Cursor(last, 0), self._checkpoint(last)

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

    def _cache(self, cursor: Cursor, summary: JournalSummary) -> None:
        """Best effort, without fsync: a cache lost in a power cut is rebuilt from the journal. Taken
        after a rotation it names an older segment count and is not used."""
        identity = self._identity(cursor.offset)
        if identity is None:
            return
        index = Path(str(self.path) + INDEX_SUFFIX)
        temporary = index.with_name(f".{index.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps({"segment": cursor.segment, **identity, "summary": summary.to_dict()}))
            os.replace(temporary, index)
        except OSError:
            temporary.unlink(missing_ok=True)

    def _checkpoint_path(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}{CHECKPOINT_SUFFIX}")

    def _checkpoint(self, number: int) -> JournalSummary:
        """The summary of segments 1..number; a missing or damaged checkpoint is rebuilt and written back."""
        if number == 0:
            return JournalSummary()
        summary = self._load_checkpoint(number)
        if summary is None:
            summary = self._rebuild_checkpoint(number)
            try:
                self._write_checkpoint(number, summary)
            except OSError:
                pass  # best effort for a reader: the next append writes it under the lock, errors reported
        return summary

    def _load_checkpoint(self, number: int) -> JournalSummary | None:
        """None when missing or damaged (rebuilt then); other OSErrors propagate."""
        try:
            raw = json.loads(self._checkpoint_path(number).read_text())
            if int(raw["segment"]) == number:
                return JournalSummary.from_dict(raw["summary"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        return None

    def _rebuild_checkpoint(self, number: int) -> JournalSummary:
        """The slow path: the nearest earlier checkpoint that reads, and the segments after it."""
        base, summary = number - 1, None
        while base > 0 and (summary := self._load_checkpoint(base)) is None:
            base -= 1
        summary = JournalSummary() if summary is None else summary
        for segment in range(base + 1, number + 1):
            summary = summary.add(*_parse(self._read_segment(segment))[0])
        return summary

    def _write_checkpoint(self, number: int, summary: JournalSummary) -> None:
        write_atomic(self._checkpoint_path(number), json.dumps({"segment": number, "summary": summary.to_dict()}))


_SEGMENT = re.compile(r"(\d+)(\.gz)?")


def _segment_match(name: str, journal: str) -> re.Match[str] | None:
    return _SEGMENT.fullmatch(name[len(journal) + 1:]) if name.startswith(journal + ".") else None


def _parse(data: bytes) -> tuple[list[Record], int]:
    """The records in ``data``, and how many non-empty lines did not read as one."""
    records: list[Record] = []
    skipped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            records.append(Record.from_json(line.decode(errors="replace")))
        except (ValueError, KeyError, TypeError):
            skipped += 1
    return records, skipped


def _complete_end(handle: BinaryIO) -> int:
    """The offset just after the file's last newline."""
    end = os.fstat(handle.fileno()).st_size
    while end > 0:
        start = max(0, end - 65536)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


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
