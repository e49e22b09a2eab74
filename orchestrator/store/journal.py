"""The per-model journal: append-only JSON lines, one ``core.journal.Record`` per line, rotated by size.

Files, beside each other in the model's state folder (``version_history.log`` below is the path given):

    version_history.log                     the live file: appends land here
    version_history.log.<n>.gz              segment n (1, 2, ... oldest lowest): a former live file, gzipped
    version_history.log.<n>                 segment n before its compression finished (a crash can leave it)
    version_history.log.<n>.summary.json    checkpoint: the ``JournalSummary`` of segments 1..n
    version_history.log.index.json          the summary cached for the live file (a cache only)
    version_history.log.lock                flock held for append + rotate

Each line carries a CRC-32 of its record's bytes (``{"crc":"<8 hex>",`` then the record's own JSON), so
a record damaged after it was written (a bad block, a hand edit) is reported with its place instead of
being skipped silently; lines from before checksums read as they are. Appends are fsynced and written
whole or not at all: a write the disk cuts short is truncated back. A torn last line (a power cut
mid-write) is skipped on read and fenced off on the next append by a newline and a fence line, so it
reads as torn, not as damage, afterwards. Writers (CLI commands, the watcher) take the lock, so no record lands in
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
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator import faults
from orchestrator.core.journal import Damage, History, JournalProblem, JournalSummary, Record
from orchestrator.store.atomic import atomic_file, fsync_dir, open_own, write_atomic

JOURNAL_FILE = "version_history.log"
MAX_BYTES = 8 * 1024 * 1024  # the live file is rotated before an append would take it above this
INDEX_SUFFIX = ".index.json"
CHECKPOINT_SUFFIX = ".summary.json"
LOCK_SUFFIX = ".lock"
INDEX_EVERY_BYTES = 4096  # fold at most this much of the journal again before caching the summary
_MARK_BYTES = 256  # the journal's bytes just before the cached offset: a rewritten file does not match
_GZIP_LEVEL = 6
_CRC_HEAD = b'{"crc":"'
_CRC_END = len(_CRC_HEAD) + 8  # the 8 hex digits
_FENCE = b'{"fence":"the line above is a torn write"}'  # follows a torn line once the next append ends it


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
        self._last_seen: int | None = None  # segments are never removed: look for newer ones from here

    # --- writing ------------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        line = frame(record)
        faults.before_write(self.path)
        with self._locked():
            if not self._repaired:
                self._repair()
                self._repaired = True
            fence = b"\n" + _FENCE + b"\n" if _ends_without_newline(self.path) else b""
            size = self.size()
            if size and size + len(fence) + len(line) > self.max_bytes:
                self._rotate()
                fence = b""  # a segment's end ends its last line
            existed = self.path.exists()
            fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                _write_whole(fd, fence + line, self.path)
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
        # An unterminated last line is final now that it is a segment.
        rest, problems, _ = self._read_since(cursor)
        self._write_checkpoint(number, summary.add(*rest).with_damage(*problems))
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
        problems: list[JournalProblem] = []
        with self._view() as (last, live):
            for number in range(1, last + 1):
                found, bad = _parse(self._read_segment(number), self._packed(number).name)
                records += found
                problems += bad
            if live is not None:
                found, bad = _parse(live.read(), self.path.name, final=True)
                records += found
                problems += bad
        return History(tuple(records), tuple(problems))

    def cursor(self) -> Cursor:
        """The end of the journal, for a follower to start from (a line being written is after it)."""
        with self._view() as (last, live):
            return Cursor(last, _complete_end(live) if live is not None else 0)

    def read_since(self, cursor: Cursor) -> tuple[list[Record], Cursor]:
        """Complete records appended after ``cursor`` (those rotated into segments since included), and
        the cursor to continue from. A cursor past the end (the journal was replaced) restarts at the end."""
        records, _, end = self._read_since(cursor)
        return records, end

    def _read_since(self, cursor: Cursor) -> tuple[list[Record], list[JournalProblem], Cursor]:
        with self._view() as (last, live):
            size = os.fstat(live.fileno()).st_size if live is not None else 0
            if cursor.segment > last or (cursor.segment == last and cursor.offset > size):
                return [], [], Cursor(last, _complete_end(live) if live is not None else 0)
            records: list[Record] = []
            problems: list[JournalProblem] = []
            start = cursor.offset
            if cursor.segment < last:
                number = cursor.segment + 1
                found, bad = _parse(self._read_segment(number, start), self._packed(number).name, start)
                records += found
                problems += bad
                for number in range(cursor.segment + 2, last + 1):
                    found, bad = _parse(self._read_segment(number), self._packed(number).name)
                    records += found
                    problems += bad
                start = 0
            if live is None:
                return records, problems, Cursor(last, 0)
            live.seek(start)
            data = live.read()
        end = data.rfind(b"\n") + 1  # a line still being written is left for the next call
        found, bad = _parse(data[:end], self.path.name, start, final=True)
        return records + found, problems + bad, Cursor(last, start + end)

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
        if self._last_seen is None:
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
        records, problems, end = self._read_since(start)
        summary = summary.add(*records).with_damage(*problems)
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
            records, problems = _parse(self._read_segment(segment), self._packed(segment).name)
            summary = summary.add(*records).with_damage(*problems)
        return summary

    def _write_checkpoint(self, number: int, summary: JournalSummary) -> None:
        write_atomic(self._checkpoint_path(number), json.dumps({"segment": number, "summary": summary.to_dict()}))


_SEGMENT = re.compile(r"(\d+)(\.gz)?")


def _segment_match(name: str, journal: str) -> re.Match[str] | None:
    return _SEGMENT.fullmatch(name[len(journal) + 1:]) if name.startswith(journal + ".") else None


def frame(record: Record) -> bytes:
    """The journal line of ``record``: its JSON with a CRC-32 of those bytes in front, still one JSON object."""
    body = record.to_json().encode()
    return b'%s%08x",%s\n' % (_CRC_HEAD, zlib.crc32(body), body[1:])


def unframe(line: bytes) -> Record:
    """The record of one journal line; ValueError says why it is not one."""
    if line.startswith(_CRC_HEAD) and line[_CRC_END:_CRC_END + 2] == b'",':
        body = b"{" + line[_CRC_END + 2:]
        try:
            expected = int(line[len(_CRC_HEAD):_CRC_END], 16)
        except ValueError:
            raise ValueError("its checksum is not hexadecimal") from None
        if zlib.crc32(body) != expected:
            raise ValueError("its checksum does not match its bytes")
    elif b'"crc"' in line:
        raise ValueError("its checksum is not where it belongs")
    else:
        body = line  # written before records carried checksums
    try:
        return Record.from_json(body.decode())
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"it does not read as a record ({type(exc).__name__}: {exc})") from None


def _parse(data: bytes, name: str, base: int = 0, final: bool = False) -> tuple[list[Record], list[JournalProblem]]:
    """The records in ``data`` (bytes of file ``name`` from offset ``base``), and the lines that are not
    one. ``final``: ``data`` ends where the live file ends, so a bad last line may still be fenced (torn)."""
    records: list[Record] = []
    problems: list[JournalProblem] = []
    lines = data.split(b"\n")
    offset = base
    for index, line in enumerate(lines):
        at, offset = offset, offset + len(line) + 1
        if not line.strip() or line == _FENCE:
            continue
        try:
            records.append(unframe(line))
        except ValueError as exc:
            following = lines[index + 1] if index + 1 < len(lines) else None
            last = index == len(lines) - 1 or (final and not any(rest.strip() for rest in lines[index + 1:]))
            torn = following == _FENCE or last  # an unterminated last line, or one the next append fenced
            problems.append(JournalProblem(name, at, Damage.TORN if torn else Damage.DAMAGED,
                                           "never completed" if torn else str(exc)))
    return records, problems


def _write_whole(fd: int, data: bytes, path: Path) -> None:
    """Write ``data`` at the end and fsync, or leave the file as it was: a write the disk cuts short
    (full, I/O error) is truncated back, so no half record stays behind to be mistaken for damage."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        faults.short_write(fd, view, path)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            pass  # what is left is an unterminated line: read as torn, fenced by the next append
        raise


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
