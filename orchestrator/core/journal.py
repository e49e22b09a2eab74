"""Journal records as values: what happened to a model, one record per event.

Each operation writes a ``started`` record before it acts and a final record when it ends,
under one operation id; an operation with no final record was interrupted and is repaired
by the next command. The file itself (append, fsync, torn lines) is ``store/journal.py``.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any


class Action(str, enum.Enum):
    IMPORT = "import"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    RECONCILE = "reconcile"
    SHADOW = "shadow"
    BASELINE = "baseline"  # the watcher recorded a version's drift baseline
    ANOMALY = "anomaly"  # the watcher alerted without switching

    @property
    def switches(self) -> bool:
        """Moves serving from one version to another."""
        return self in (Action.PROMOTE, Action.ROLLBACK)


class Result(str, enum.Enum):
    STARTED = "started"
    STEP = "step"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    REPAIRED = "repaired"  # an interrupted operation finished by a later command
    ABORTED = "aborted"  # an interrupted operation undone by a later command
    ALERT = "alert"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({Result.SUCCEEDED, Result.FAILED, Result.REFUSED, Result.REPAIRED, Result.ABORTED,
                    Result.ALERT})
# Kept for readers of the string constants.
STARTED, STEP, SUCCEEDED, FAILED = Result.STARTED, Result.STEP, Result.SUCCEEDED, Result.FAILED
REFUSED, REPAIRED, ABORTED = Result.REFUSED, Result.REPAIRED, Result.ABORTED
FINAL_RESULTS = _FINAL


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_op_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Record:
    action: Action
    result: Result
    op: str
    time: str = field(default_factory=now_iso)
    actor: str = ""  # who: settings.default_actor() for a person, "watch" for the daemon
    from_version: int | None = None
    to_version: int | None = None
    reason: str = ""
    duration_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Callers may name the closed sets by their text ("promote"); a typo fails here, not on disk.
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "result", Result(self.result))

    def to_json(self) -> str:
        doc = asdict(self)
        doc["action"], doc["result"] = self.action.value, self.result.value
        doc["from"] = doc.pop("from_version")
        doc["to"] = doc.pop("to_version")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        """ValueError (an unknown action or result included) marks a line the reader skips."""
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("record is not an object")
        return cls(
            action=Action(doc["action"]),
            result=Result(doc["result"]),
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
        return self.result.is_final


@dataclass(frozen=True)
class History:
    records: tuple[Record, ...]
    skipped_lines: int  # torn or unreadable lines, reported rather than fatal

    def unfinished(self) -> Record | None:
        """The ``started`` record of the last operation that never got a final record."""
        finished = {r.op for r in self.records if r.is_final}
        for record in reversed(self.records):
            if record.result is Result.STARTED and record.op not in finished:
                return record
        return None

    def steps(self, op: str) -> list[str]:
        return [str(r.details.get("step")) for r in self.records if r.op == op and r.result is Result.STEP]

    def with_records(self, *records: Record) -> History:
        """This history after our own appends: no need to read the file again."""
        return History(self.records + records, self.skipped_lines)
