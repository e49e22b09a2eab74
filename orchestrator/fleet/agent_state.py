"""What a device's fleet agent remembers across restarts: one JSON file, ``<state_dir>/fleet/agent.json``.

Replaced atomically (``store/atomic.py``) after every step, so a kill at any point leaves the state of
the step before or after it, never a mix: the agent reads it, finishes the step in progress, writes it.
It holds, per model the fleet drives, the desired document being applied and how far it got, the
agent's own map of package sha256 -> local version, and the versions served before each install (what
a block rolls back to); for the device, the fleet notice in force and the outbox: every event not yet
acknowledged by the controller, numbered, bounded (the oldest go first, and ``dropped`` counts them).

Values only: the agent (``agent.py``) decides, this module reads and writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic

STATE_FILE = "agent.json"
SCHEMA = 1
OUTBOX_LIMIT = 10_000

# How far the current desired document got. ACCEPTED and IMPORTED are "accepted" (in progress: the same
# serial arriving again resumes it); the rest are "applied" (the same serial again is ignored).
ACCEPTED, IMPORTED = "accepted", "imported"
SERVING, VERIFIED, FAILED, REVERTED, SUPERSEDED = "serving", "verified", "failed", "reverted", "superseded"
IN_PROGRESS = (ACCEPTED, IMPORTED)
WATCHED = (SERVING, VERIFIED)  # an install that serves: a rollback away from it fails it


@dataclass
class Away:
    """Rollbacks away from one version, from the model's journal."""

    automatic: int = 0  # by the watcher: what the report counts
    others: int = 0  # by anyone but this agent (an operator's included): what fails an install
    reason: str = ""  # the last one's

    def to_json(self) -> dict[str, Any]:
        return {"automatic": self.automatic, "others": self.others, "reason": self.reason}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Away:
        return cls(int(raw.get("automatic", 0)), int(raw.get("others", 0)), str(raw.get("reason", "")))


@dataclass
class ModelState:
    serial: int = 0  # the highest serial accepted: a document at or below it is a replay
    doc: dict[str, Any] | None = None  # the accepted desired document (its verified "doc" object)
    stage: str = ""
    version: int | None = None  # the local version of the document's package, once imported
    serving_at: float | None = None  # when it started serving (the bake's start), seconds since the epoch
    others_at_serving: int = 0  # rollbacks away from it by others when it started serving
    since: tuple[int, int] | None = None  # the journal's cursor when the document was accepted
    installed: dict[str, int] = field(default_factory=dict)  # package sha256 -> local version
    before: dict[str, int] = field(default_factory=dict)  # package sha256 -> version served before installing it
    refused: dict[str, str] = field(default_factory=dict)  # package sha256 -> rollout that reverted it
    away: dict[int, Away] = field(default_factory=dict)  # version -> rollbacks away from it
    cursor: tuple[int, int] | None = None  # how far the journal is mirrored (None: not begun)

    @property
    def in_progress(self) -> bool:
        return self.doc is not None and self.stage in IN_PROGRESS

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "doc": self.doc, "stage": self.stage, "version": self.version,
                "serving_at": self.serving_at, "others_at_serving": self.others_at_serving,
                "since": list(self.since) if self.since else None, "installed": self.installed,
                "before": self.before, "refused": self.refused,
                "away": {str(v): a.to_json() for v, a in self.away.items()},
                "cursor": list(self.cursor) if self.cursor else None}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelState:
        def pair(value: Any) -> tuple[int, int] | None:
            return (int(value[0]), int(value[1])) if value else None

        return cls(int(raw.get("serial", 0)), raw.get("doc"), str(raw.get("stage", "")), raw.get("version"),
                   raw.get("serving_at"), int(raw.get("others_at_serving", 0)), pair(raw.get("since")),
                   {str(k): int(v) for k, v in (raw.get("installed") or {}).items()},
                   {str(k): int(v) for k, v in (raw.get("before") or {}).items()},
                   {str(k): str(v) for k, v in (raw.get("refused") or {}).items()},
                   {int(k): Away.from_json(v) for k, v in (raw.get("away") or {}).items()}, pair(raw.get("cursor")))


@dataclass
class AgentState:
    models: dict[str, ModelState] = field(default_factory=dict)
    notice_serial: int = 0
    blocks: list[dict[str, Any]] = field(default_factory=list)  # the notice's blocks in force (all of them)
    applied_blocks: list[str] = field(default_factory=list)  # ids of the blocks this device has acted on
    seq: int = 0  # the last event number given out: never reused
    acked: int = 0  # the controller has every event up to this one
    dropped: int = 0  # events dropped unacknowledged because the outbox was full
    outbox: list[dict[str, Any]] = field(default_factory=list)  # unacknowledged events, oldest first
    counters: dict[str, Any] = field(default_factory=dict)  # counters.CounterBook's, as last saved

    def model(self, name: str) -> ModelState:
        return self.models.setdefault(name, ModelState())

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "models": {m: s.to_json() for m, s in sorted(self.models.items())},
                "notice_serial": self.notice_serial, "blocks": self.blocks,
                "applied_blocks": self.applied_blocks, "seq": self.seq, "acked": self.acked,
                "dropped": self.dropped, "outbox": self.outbox, "counters": self.counters}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AgentState:
        return cls({str(m): ModelState.from_json(s) for m, s in (raw.get("models") or {}).items()},
                   int(raw.get("notice_serial", 0)), list(raw.get("blocks") or []),
                   [str(b) for b in raw.get("applied_blocks") or []], int(raw.get("seq", 0)),
                   int(raw.get("acked", 0)), int(raw.get("dropped", 0)), list(raw.get("outbox") or []),
                   dict(raw.get("counters") or {}))


def load_state(folder: Path) -> AgentState:
    """The saved state, or a fresh one for a device that never ran the agent; RepositoryCorrupt when unreadable
    (a fresh start would reuse event numbers and forget what was applied)."""
    path = folder / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AgentState()
    except OSError as exc:
        raise RepositoryCorrupt(f"{path}: {exc.strerror}") from exc
    try:
        return AgentState.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise RepositoryCorrupt(f"{path} is unreadable ({exc}); move it aside to start the fleet agent afresh "
                                f"(event numbers start again at 1)") from exc


def save_state(folder: Path, state: AgentState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / STATE_FILE, json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")))
