"""The per-model history: an append-only JSON-lines file, one record per event.

Each operation writes a ``started`` record before it acts and a final record when it
ends, under one operation id; an operation with no final record was interrupted and is
repaired by the next command. Appends are fsynced; a torn last line (power cut mid-write)
is skipped on read and fenced off by a newline on the next append.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator import faults

JOURNAL_FILE = "version_history.log"

STARTED = "started"
SUCCEEDED = "succeeded"
FAILED = "failed"
REFUSED = "refused"
REPAIRED = "repaired"  # an interrupted operation finished by a later command
ABORTED = "aborted"  # an interrupted operation undone by a later command
STEP = "step"
FINAL_RESULTS = frozenset({SUCCEEDED, FAILED, REFUSED, REPAIRED, ABORTED})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_actor() -> str:
    actor = os.environ.get("ORCH_ACTOR")
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def new_op_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Record:
    action: str  # import, promote, rollback, reconcile, ...
    result: str  # started, step, succeeded, failed, refused, repaired, aborted
    op: str
    time: str = field(default_factory=now_iso)
    actor: str = field(default_factory=default_actor)
    from_version: int | None = None
    to_version: int | None = None
    reason: str = ""
    duration_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["from"] = doc.pop("from_version")
        doc["to"] = doc.pop("to_version")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("record is not an object")
        return cls(
            action=str(doc["action"]),
            result=str(doc["result"]),
            op=str(doc["op"]),
            time=str(doc["time"]),
            actor=str(doc.get("actor", "")),
            from_version=doc.get("from"),
            to_version=doc.get("to"),
            reason=str(doc.get("reason", "")),
            duration_ms=doc.get("duration_ms"),
            details=dict(doc.get("details") or {}),
        )

    @property
    def is_final(self) -> bool:
        return self.result in FINAL_RESULTS


@dataclass(frozen=True)
class History:
    records: tuple[Record, ...]
    skipped_lines: int  # torn or unreadable lines, reported rather than fatal

    def unfinished(self) -> Record | None:
        """The ``started`` record of the last operation that never got a final record."""
        finished = {r.op for r in self.records if r.is_final}
        for record in reversed(self.records):
            if record.result == STARTED and record.op not in finished:
                return record
        return None

    def steps(self, op: str) -> list[str]:
        return [str(r.details.get("step")) for r in self.records if r.op == op and r.result == STEP]


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
