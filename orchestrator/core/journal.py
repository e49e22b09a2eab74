"""Journal records as values: what happened to a model, one record per event.

Each operation writes a ``started`` record before it acts and a final record when it ends,
under one operation id; an operation with no final record was interrupted and is repaired
by the next command. The file itself (append, fsync, torn lines) is ``store/journal.py``.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass, field, replace
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
    PRUNE = "prune"  # old versions' artifacts removed, their evidence kept (usecases/prune.py)
    PAUSE = "pause"  # automatic rollback of the model paused by an operator
    RESUME = "resume"  # ... and resumed
    LABEL = "label"  # a version label moved or removed
    REPLAY = "replay"  # recording of production inputs for replay set up, stopped or cleared
    FLEET = "fleet"  # the fleet agent: a desired document accepted, applied or refused, a block applied

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


class Damage(str, enum.Enum):
    TORN = "torn"  # the last write of a process that died mid-line: never acknowledged, fenced off
    DAMAGED = "damaged"  # a record that was written whole and reads otherwise now (checksum, bytes)


@dataclass(frozen=True)
class JournalProblem:
    """A line of the journal that is not a record: where it is and why."""

    file: str  # the journal file's name (a segment's name for an older one)
    offset: int  # byte offset of the line in that file (uncompressed)
    kind: Damage
    reason: str

    def describe(self) -> str:
        what = "a torn write (a process ended mid-line)" if self.kind is Damage.TORN else "a damaged record"
        return f"{self.file} at byte {self.offset}: {what}: {self.reason}"


@dataclass(frozen=True)
class History:
    records: tuple[Record, ...]
    problems: tuple[JournalProblem, ...] = ()  # lines that are not records, reported rather than fatal

    @property
    def damaged(self) -> tuple[JournalProblem, ...]:
        """Records that were written whole and no longer read: a torn last write is not among them."""
        return tuple(p for p in self.problems if p.kind is Damage.DAMAGED)

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
        return JournalSummary().add(*self.records).with_damage(*self.problems)


SERVED_KEPT = 64  # served versions remembered: fallbacks are looked for among the most recent
DAMAGED_KEPT = 16  # places of damaged records remembered for status


@dataclass(frozen=True)
class JournalSummary:
    """What a command needs from the past, folded one record at a time, so that no command parses
    the whole history: the order versions served in and the operations still open."""

    served: tuple[int, ...] = ()  # versions in the order they started serving (the last SERVED_KEPT)
    open: tuple[Record, ...] = ()  # ``started`` records with no final record yet, oldest first
    damaged: tuple[str, ...] = ()  # where damaged records were found (the last DAMAGED_KEPT)
    damaged_count: int = 0
    # Events counted since the journal began (``counted``), and the time of each kind's last one: what
    # the watcher's counters start from, so that a restart neither forgets nor repeats an event.
    counts: tuple[tuple[str, int], ...] = ()
    last: tuple[tuple[str, str], ...] = ()

    def count(self, key: str) -> int:
        return dict(self.counts).get(key, 0)

    def last_time(self, event: str) -> str | None:
        return dict(self.last).get(event)

    def with_damage(self, *problems: JournalProblem) -> JournalSummary:
        found = [p.describe() for p in problems if p.kind is Damage.DAMAGED]
        if not found:
            return self
        return replace(self, damaged=(*self.damaged, *found)[-DAMAGED_KEPT:],
                       damaged_count=self.damaged_count + len(found))

    def add(self, *records: Record) -> JournalSummary:
        served, opened = list(self.served), {r.op: r for r in self.open}
        counts, last = dict(self.counts), dict(self.last)
        for record in records:
            if record.result is Result.STARTED:
                opened[record.op] = record
            elif record.is_final:
                for key, event in counted(record, opened.pop(record.op, None)):
                    counts[key] = counts.get(key, 0) + 1
                    last[event] = record.time
            if (record.action.switches or record.action is Action.RECONCILE) \
                    and record.result in (Result.SUCCEEDED, Result.REPAIRED):
                if record.from_version is not None and not served:
                    served.append(record.from_version)
                if record.to_version is not None:
                    served.append(record.to_version)
        return JournalSummary(tuple(served[-SERVED_KEPT:]), tuple(opened.values()), self.damaged, self.damaged_count,
                              tuple(sorted(counts.items())), tuple(sorted(last.items())))

    def unfinished(self) -> Record | None:
        """The ``started`` record of the last operation that never got a final record."""
        return self.open[-1] if self.open else None

    def to_dict(self) -> dict[str, Any]:
        return {"served": list(self.served), "open": [json.loads(r.to_json()) for r in self.open],
                "damaged": list(self.damaged), "damaged_count": self.damaged_count,
                "counts": dict(self.counts), "last": dict(self.last)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JournalSummary:
        """KeyError for a summary written before events were counted: the store rebuilds it from the records."""
        return cls(tuple(int(v) for v in raw["served"]), tuple(Record.from_json(json.dumps(r)) for r in raw["open"]),
                   tuple(str(d) for d in raw.get("damaged", ())), int(raw.get("damaged_count", 0)),
                   tuple(sorted((str(k), int(v)) for k, v in raw["counts"].items())),
                   tuple(sorted((str(k), str(v)) for k, v in raw["last"].items())))


# What ``counted`` yields: (counter key, event). Keys: ``rollback:<trigger>:<rule>`` (trigger ``watch`` for
# the watcher's own, ``operator`` otherwise, whose rule is ``operator``), ``promote:<outcome>``,
# ``quarantine``. Events (the time of the last one is kept): rollback, promote_failed, quarantine.
WATCH_ACTOR = "watch"
PROMOTE_OUTCOMES = {Result.SUCCEEDED: "succeeded", Result.REPAIRED: "succeeded", Result.FAILED: "failed",
                    Result.ABORTED: "failed", Result.REFUSED: "refused"}


def counted(record: Record, started: Record | None) -> list[tuple[str, str]]:
    """The events a final record ends, given the operation's ``started`` record when there was one."""
    if record.action is Action.PROMOTE and record.result in PROMOTE_OUTCOMES:
        outcome = PROMOTE_OUTCOMES[record.result]
        return [(f"promote:{outcome}", "promote" if outcome == "succeeded" else "promote_failed")]
    if record.action is Action.ROLLBACK and record.result in (Result.SUCCEEDED, Result.REPAIRED):
        origin = started or record
        details = {**origin.details, **record.details}
        trigger = "watch" if origin.actor == WATCH_ACTOR else "operator"
        evidence = details.get("evidence")
        rule = str(evidence.get("rule") or "unknown") if trigger == "watch" and isinstance(evidence, dict) \
            else "operator"
        events = [(f"rollback:{trigger}:{rule}", "rollback")]
        if details.get("quarantine") is True:
            events.append(("quarantine", "quarantine"))
        return events
    return []
