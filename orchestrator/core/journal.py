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

    def summary(self) -> JournalSummary:
        return JournalSummary().add(*self.records)


SERVED_KEPT = 64  # served versions remembered: fallbacks are looked for among the most recent


@dataclass(frozen=True)
class JournalSummary:
    """What a command needs from the past, folded one record at a time, so that no command parses
    the whole history: the order versions served in and the operations still open."""

    served: tuple[int, ...] = ()  # versions in the order they started serving (the last SERVED_KEPT)
    open: tuple[Record, ...] = ()  # ``started`` records with no final record yet, oldest first

    def add(self, *records: Record) -> JournalSummary:
        served, opened = list(self.served), {r.op: r for r in self.open}
        for record in records:
            if record.result is Result.STARTED:
                opened[record.op] = record
            elif record.is_final:
                opened.pop(record.op, None)
            if (record.action.switches or record.action is Action.RECONCILE) \
                    and record.result in (Result.SUCCEEDED, Result.REPAIRED):
                if record.from_version is not None and not served:
                    served.append(record.from_version)
                if record.to_version is not None:
                    served.append(record.to_version)
        return JournalSummary(tuple(served[-SERVED_KEPT:]), tuple(opened.values()))

    def unfinished(self) -> Record | None:
        """The ``started`` record of the last operation that never got a final record."""
        return self.open[-1] if self.open else None

    def to_dict(self) -> dict[str, Any]:
        return {"served": list(self.served), "open": [json.loads(r.to_json()) for r in self.open]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JournalSummary:
        return cls(tuple(int(v) for v in raw["served"]), tuple(Record.from_json(json.dumps(r)) for r in raw["open"]))
