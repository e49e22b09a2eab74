"""A size-bounded ring of recorded request inputs. IT HOLDS PRODUCTION DATA.

Every file is one real client request's input tensors (camera frames, whatever clients send),
kept so that a candidate version can answer real inputs at promote time. Treat the folder as
you treat the traffic itself: who may read it, how long it lives, whether it may leave the
device. Recording is off unless an operator turns it on (``replay:`` in policy.yaml,
``orchestrate replay enable``); ``orchestrate replay clear`` deletes it.

Standalone, stdlib and numpy only: besides the orchestrator (which reads the ring and records
into it from the drift sampler's traces) it is shipped into a python-backend step's version
folder and imported there, inside Triton's stub, on the request path. So:

- ``RingWriter.offer`` never raises: a full disk, a read-only folder or a tensor it cannot
  store is counted (``errors``, ``dropped``) and the request goes on; sampling stays on;
- it keeps 1 request in ``every_n`` (one at a random place in each run of ``every_n``
  offers, so a periodic pattern such as round-robin cameras cannot hide from it) and skips a
  request that is not a production input: one whose tensors equal a record it holds (a replay
  recorded again), and one whose every row is listed in the folder's ``.skip.digests`` (the
  golden set's rows, written by ``orchestrate replay enable``: the watcher's probes and promote's
  golden runs pass through the same step) or that the caller's ``skip`` predicate refuses;
- the bound holds at every moment: the oldest records are deleted to make room *before* a
  new one is written, and a record larger than the whole bound is dropped, never kept;
- one writer per folder (an exclusive ``flock`` on ``.writer.lock``): a second instance of a
  step, or the new instance while Triton reloads the step, records nothing until the lock is
  free; the writer's running total is exact because it is the only writer;
- a record is written to a temporary name and renamed (``os.replace``): a reader never sees
  half a file. It is not fsynced by default: this is a sample, and losing the last record or
  two to a power cut costs nothing (``fsync=True`` if you want it anyway).

Files: ``<seq:012d>.npz`` (``numpy.savez``, one array per input tensor, no pickles), ``seq``
counting up across restarts; the folder's ``.writer.lock``, ``.skip.digests`` and ``.<seq>.npz.tmp``
are not records.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECORD = re.compile(r"^(\d{12,})\.npz$")
PARTIAL = re.compile(r"^\.\d{12,}\.npz\.tmp$")  # a record being written (or a write a crash interrupted)
LOCK_FILE = ".writer.lock"
SKIP_FILE = ".skip.digests"  # 16-byte digests of input rows never recorded (the golden set's), back to back
TEMP_SUFFIX = ".tmp"
DIGEST_BYTES = 16
SEED_RECORDS, SEED_BYTES = 256, 8 * 2**20  # the newest records a starting writer remembers as already kept


@dataclass(frozen=True)
class RingFile:
    seq: int
    path: Path
    size: int
    mtime: float


def ring_files(folder: Path | str) -> list[RingFile]:
    """The folder's records, oldest first (an absent folder has none)."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = RECORD.match(entry.name)
        if not match:
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted while we looked
        found.append(RingFile(int(match.group(1)), Path(entry.path), stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda f: f.seq)


def digest(inputs: dict[str, np.ndarray]) -> bytes:
    """What a record's tensors are, exactly: their names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.data)
    return h.digest()


def row_digests(name: str, array: np.ndarray) -> list[bytes]:
    """One digest per row (the first axis: a batch's samples) of one input tensor."""
    array = np.ascontiguousarray(array)
    if array.ndim == 0:
        return []
    head = f"{name}\0{array.dtype.str}\0{array.shape[1:]}\0".encode()
    return [hashlib.blake2b(head + row.tobytes(), digest_size=DIGEST_BYTES).digest() for row in array]


def write_skip_list(folder: Path | str, inputs: dict[str, np.ndarray]) -> int:
    """``folder``'s skip list: every row of ``inputs`` (a golden set), replaced atomically; the rows listed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digests = b"".join(d for name, array in sorted(inputs.items()) for d in row_digests(name, array))
    tmp = folder / f"{SKIP_FILE}{TEMP_SUFFIX}"
    tmp.write_bytes(digests)
    os.replace(tmp, folder / SKIP_FILE)
    return len(digests) // DIGEST_BYTES


def encode(inputs: dict[str, np.ndarray]) -> bytes:
    """One record's file content; ValueError for what a ring does not store (no tensors, BYTES/object tensors)."""
    if not inputs:
        raise ValueError("a request with no input tensors")
    for name, array in inputs.items():
        if np.asarray(array).dtype.hasobject:
            raise ValueError(f"input {name} holds objects (BYTES): not recorded")
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(array) for name, array in inputs.items()})
    return buffer.getvalue()


class RingWriter:
    """Records 1 offered request in ``every_n`` into ``folder``, the folder never above ``max_bytes``."""

    def __init__(self, folder: Path | str, max_bytes: int, every_n: int, fsync: bool = False,
                 rng: random.Random | None = None,
                 skip: Callable[[dict[str, np.ndarray]], bool] | None = None) -> None:
        if max_bytes < 1 or every_n < 1:
            raise ValueError(f"max_bytes and every_n must be >= 1, got {max_bytes} and {every_n}")
        self.folder = Path(folder)
        self.max_bytes, self.every_n, self.fsync = int(max_bytes), int(every_n), fsync
        self.rng = rng or random.Random()
        self.skip = skip  # a predicate of the caller's: True for a request that is not a production input
        self.offered = 0  # requests offered
        self.kept = 0  # records written
        self.dropped = 0  # picked but not stored: larger than the bound, or tensors a ring cannot hold
        self.duplicates = 0  # picked but equal to a record already in the ring
        self.skipped = 0  # picked but golden (the skip list or the predicate)
        self.waiting = 0  # picked while another writer holds the folder
        self.errors = 0  # the disk refused (full, read-only): counted, never raised
        self.last_error = ""
        self.total = 0  # bytes of the records in the folder
        self._files: deque[tuple[int, Path, int]] = deque()  # (seq, path, size), oldest first
        self._digests: dict[int, bytes] = {}  # seq -> digest: the records this writer wrote, and the newest before
        self._known: set[bytes] = set()
        self._skip_rows: frozenset[bytes] = frozenset()
        self._skip_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the skip list read
        self._next_seq = 0
        self._lock_fd: int | None = None
        self._pick = self.rng.randrange(self.every_n)
        self._own()

    # --- the request path ---------------------------------------------------------------
    def offer(self, inputs: dict[str, np.ndarray]) -> bool:
        """Count one request; record it when it is the one picked of its run. Never raises."""
        position = self.offered % self.every_n
        self.offered += 1
        if position == self.every_n - 1:
            pick, self._pick = self._pick, self.rng.randrange(self.every_n)
        else:
            pick = self._pick
        if position != pick:
            return False
        try:
            return self._record(inputs)
        except Exception as exc:  # nothing may reach the caller's request
            self._failed(exc)
            return False

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # --- inside -------------------------------------------------------------------------
    def _record(self, inputs: dict[str, np.ndarray]) -> bool:
        if not self._own():
            self.waiting += 1
            return False
        key = digest(inputs)
        if key in self._known:
            self.duplicates += 1
            return False
        if self._listed(inputs) or (self.skip is not None and self.skip(inputs)):
            self.skipped += 1
            return False
        try:
            data = encode(inputs)
        except ValueError:
            self.dropped += 1
            return False
        if len(data) > self.max_bytes:
            self.dropped += 1  # alone above the bound: kept, it would break it
            return False
        while self._files and self.total + len(data) > self.max_bytes:
            self._evict()
        seq = self._next_seq
        path = self.folder / f"{seq:012d}.npz"
        tmp = self.folder / f".{seq:012d}.npz{TEMP_SUFFIX}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        self._next_seq = seq + 1
        self._files.append((seq, path, len(data)))
        self.total += len(data)
        self._digests[seq] = key
        self._known.add(key)
        self.kept += 1
        return True

    def _listed(self, inputs: dict[str, np.ndarray]) -> bool:
        """Every row of every input is in the folder's skip list (re-read when it changes: one stat a pick)."""
        try:
            stat = os.stat(self.folder / SKIP_FILE)
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._skip_stamp:
            data = (self.folder / SKIP_FILE).read_bytes() if stamp is not None else b""
            self._skip_rows = frozenset(data[i:i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES))
            self._skip_stamp = stamp
        if not self._skip_rows:
            return False
        rows = [d for name, array in inputs.items() for d in row_digests(name, array)]
        return bool(rows) and all(d in self._skip_rows for d in rows)

    def _evict(self) -> None:
        seq, path, size = self._files.popleft()
        self.total -= size
        self._known.discard(self._digests.pop(seq, b""))
        _unlink(path)  # already gone (``orchestrate replay clear``): the space is free either way

    def _own(self) -> bool:
        """The folder's lock, taken on first use (or once the writer holding it let go); then a fresh scan."""
        if self._lock_fd is not None:
            return True
        try:
            import fcntl  # noqa: PLC0415 - POSIX only; the stub runs on Linux

            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
        except Exception as exc:  # a folder we cannot use is counted, not raised
            self._failed(exc)
            return False
        self._lock_fd = fd
        self._scan()
        return True

    def _scan(self) -> None:
        for entry in os.scandir(self.folder):
            if PARTIAL.match(entry.name):
                _unlink(Path(entry.path))  # a write a crash interrupted
        files = ring_files(self.folder)
        self._files = deque((f.seq, f.path, f.size) for f in files)
        self.total = sum(f.size for f in files)
        self._next_seq = files[-1].seq + 1 if files else 0
        self._digests.clear()
        self._known.clear()
        while self._files and self.total > self.max_bytes:  # the bound was lowered since they were written
            self._evict()
        self._seed()

    def _seed(self) -> None:
        """The newest records' digests, so that a repeat of one is not kept again: Triton restarts a step's stub
        on a promote (measured: the sample's detector_pre), and a promote's replay sends the newest records
        through the step again. Bounded (``SEED_RECORDS``, ``SEED_BYTES``): this may run inside a request,
        when the previous instance lets go of the lock."""
        budget = SEED_BYTES
        for count, (seq, path, size) in enumerate(reversed(self._files)):
            if count >= SEED_RECORDS or size > budget:
                break
            budget -= size
            try:
                with np.load(path, allow_pickle=False) as data:
                    key = digest({name: data[name] for name in data.files})
            except Exception:  # unreadable: read_ring skips it too
                continue
            self._digests[seq] = key
            self._known.add(key)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_ring(folder: Path | str, limit: int, skipped: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    """The newest ``limit`` readable records, newest last. A file that cannot be read (partial, damaged,
    deleted meanwhile) is skipped; ``skipped`` collects ``"<name>: <why>"`` for each."""
    records: list[dict[str, np.ndarray]] = []
    for ring_file in reversed(ring_files(folder)):
        if len(records) >= limit:
            break
        try:
            with np.load(ring_file.path, allow_pickle=False) as data:
                record = {name: data[name] for name in data.files}
            if not record:
                raise ValueError("no tensors")
        except Exception as exc:  # BadZipFile, ValueError, OSError, EOFError: all "unreadable"
            if skipped is not None:
                skipped.append(f"{ring_file.path.name}: {type(exc).__name__}: {exc}")
            continue
        records.append(record)
    records.reverse()
    return records

