"""The controller's store: one SQLite file holding devices, their events, rollouts and desired documents.

The broker holds nothing this file cannot rebuild: desired documents are kept here (signed, with
their serials) and republished on every reconnect; events are kept here once, keyed by (device,
seq), so a resent or duplicated event is stored once and acknowledged again. Every change is one
transaction (WAL, synchronous FULL: an acknowledged event is on disk before its ack leaves), so the
controller killed at any point restarts from the last committed step.

``transaction()`` takes SQLite's write lock at once (BEGIN IMMEDIATE): the serving controller's
step and an operator's ``fleet rollout pause`` never interleave.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import FleetError
from orchestrator.fleet import codec, topics
from orchestrator.fleet.documents import Block
from orchestrator.fleet.plan import Plan
from orchestrator.fleet.rollout import Assignment, DeviceView, Phase, Rollout

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, enrolled_at REAL NOT NULL,
    online INTEGER NOT NULL DEFAULT 0, presence_at REAL, report TEXT, report_at REAL,
    acked INTEGER NOT NULL DEFAULT 0, next_serial INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, model TEXT, rollout TEXT, serial INTEGER,
    body TEXT NOT NULL, received_at REAL NOT NULL, processed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, seq));
CREATE INDEX IF NOT EXISTS events_unprocessed ON events (rollout, processed);
CREATE TABLE IF NOT EXISTS desired (
    device TEXT NOT NULL, model TEXT NOT NULL, serial INTEGER NOT NULL, rollout TEXT NOT NULL, intent TEXT NOT NULL,
    doc BLOB NOT NULL, issued_at REAL NOT NULL, published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, model));
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, plan TEXT NOT NULL, plan_file BLOB NOT NULL, signer TEXT NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    rollout TEXT NOT NULL, device TEXT NOT NULL, wave INTEGER NOT NULL, state TEXT NOT NULL, since REAL NOT NULL,
    prev_version INTEGER, version INTEGER, detail TEXT, overdue INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout, device));
CREATE TABLE IF NOT EXISTS history (rollout TEXT NOT NULL, at REAL NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_rollout ON history (rollout, at);
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, sha256 TEXT NOT NULL, selector TEXT NOT NULL, reason TEXT NOT NULL,
    rollout TEXT, created_at REAL NOT NULL, lifted_at REAL);
CREATE TABLE IF NOT EXISTS retired (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, enrolled_at REAL NOT NULL, retired_at REAL NOT NULL,
    reason TEXT NOT NULL, report TEXT);
CREATE TABLE IF NOT EXISTS clears (topic TEXT PRIMARY KEY, published INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS notices (
    serial INTEGER PRIMARY KEY, doc BLOB NOT NULL, issued_at REAL NOT NULL, published INTEGER NOT NULL DEFAULT 0);
"""


FINAL_PHASES = tuple(p.value for p in Phase if p.final)


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    labels: dict[str, str]
    online: bool
    report: dict[str, Any] | None
    report_at: float | None
    presence_at: float | None
    acked: int


@dataclass(frozen=True)
class RetiredDevice:
    id: str
    labels: dict[str, str]
    retired_at: float
    reason: str


@dataclass(frozen=True)
class StoredEvent:
    device: str
    seq: int
    kind: str
    model: str | None
    rollout: str | None
    serial: int | None
    body: dict[str, Any]


def _dropped(report: dict[str, Any]) -> bool:
    outbox = report.get("outbox")
    return isinstance(outbox, dict) and isinstance(outbox.get("dropped"), int) and outbox["dropped"] > 0


def _first_pending(report: dict[str, Any]) -> int:
    first = (report.get("outbox") or {}).get("first")
    return first if isinstance(first, int) and not isinstance(first, bool) else 0


class FleetStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(f"cannot open the fleet store {path}: {exc}") from exc
        self._json: dict[tuple[str, str], tuple[str, Any]] = {}  # (device, column) -> (text, parsed): ``_parsed``

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise FleetError(f"the fleet store {self.path} is busy: {exc}") from exc
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- devices ------------------------------------------------------------------------------
    def enrol(self, devices: Mapping[str, Mapping[str, str]], now: float | None = None) -> None:
        """Devices and their labels: enrolled labels are the ones rollouts select on (a device cannot relabel
        itself into another group by reporting)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.executemany("INSERT INTO devices (id, labels, enrolled_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (id) DO UPDATE SET labels = excluded.labels",
                           [(d, json.dumps(dict(labels), sort_keys=True), now) for d, labels in devices.items()])
            # Enrolled again after a retirement: its topics' pending clears would wipe what it now publishes.
            db.executemany("DELETE FROM retired WHERE id = ?", [(d,) for d in devices])
            db.executemany("DELETE FROM clears WHERE substr(topic, 1, length(?)) = ?",
                           [(topics.device_prefix(d), topics.device_prefix(d)) for d in devices])

    def retire(self, devices: Sequence[str], reason: str, now: float | None = None) -> list[str]:
        """Devices out of the fleet, in one transaction: each moves to ``retired`` (its events, assignments and
        rollout history stay), its desired documents are dropped, and its retained topics are queued to be
        cleared on the broker (``pending_clears``). Returns those topics. Refused for a device that is not
        enrolled, or that a rollout still drives (running, or reverting it)."""
        now = time.time() if now is None else now
        wanted = list(dict.fromkeys(devices))
        marks = ",".join("?" * len(wanted))
        with self.transaction() as db:
            enrolled = {r[0] for r in db.execute(f"SELECT id FROM devices WHERE id IN ({marks})", wanted)}
            missing = [d for d in wanted if d not in enrolled]
            if missing:
                raise FleetError(f"not enrolled: {', '.join(missing)} (fleet devices lists those that are)")
            busy: dict[str, str] = {}
            for device, rollout, state, phase in db.execute(
                    "SELECT a.device, a.rollout, a.state, r.state FROM assignments a "
                    f"JOIN rollouts r ON r.id = a.rollout WHERE a.device IN ({marks}) ORDER BY r.created_at", wanted):
                if json.loads(phase)["phase"] not in FINAL_PHASES or state == "reverting":
                    busy.setdefault(device, rollout)
            if busy:
                device, rollout = next(iter(busy.items()))
                more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
                raise FleetError(f"{device}{more} is still driven by rollout {rollout}: let it finish, or abort it "
                                 f"and let its reverts end, then retire")
            cleared = [t for d in wanted for t in (topics.report(d), topics.presence(d))]
            cleared += [topics.desired(d, m) for d, m in
                        db.execute(f"SELECT device, model FROM desired WHERE device IN ({marks})", wanted)]
            db.execute("INSERT OR REPLACE INTO retired (id, labels, enrolled_at, retired_at, reason, report) "
                       f"SELECT id, labels, enrolled_at, ?, ?, report FROM devices WHERE id IN ({marks})",
                       [now, reason, *wanted])
            db.execute(f"DELETE FROM devices WHERE id IN ({marks})", wanted)
            db.execute(f"DELETE FROM desired WHERE device IN ({marks})", wanted)
            db.executemany("INSERT INTO clears (topic) VALUES (?) ON CONFLICT (topic) DO UPDATE SET published = 0",
                           [(t,) for t in cleared])
        for device in wanted:
            for column in ("labels", "report"):
                self._json.pop((device, column), None)
        return cleared

    def retired(self) -> list[RetiredDevice]:
        rows = self.db.execute("SELECT id, labels, retired_at, reason FROM retired ORDER BY retired_at, id").fetchall()
        return [RetiredDevice(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]

    def pending_clears(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT topic FROM clears WHERE published = 0 ORDER BY topic")]

    def mark_cleared(self, cleared: Sequence[str]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE clears SET published = 1 WHERE topic = ?", [(t,) for t in cleared])

    def known(self, device: str) -> bool:
        return self.db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone() is not None

    def devices(self) -> list[DeviceRecord]:
        rows = self.db.execute("SELECT id, labels, online, report, report_at, presence_at, acked FROM devices "
                               "ORDER BY id").fetchall()
        return [DeviceRecord(r[0], self._parsed(r[0], "labels", r[1]), bool(r[2]), self._parsed(r[0], "report", r[3]),
                             r[4], r[5], r[6]) for r in rows]

    def _parsed(self, device: str, column: str, text: str | None) -> Any:
        """A device's stored JSON, parsed again only when its text changed: a step reads every device's report,
        and most are the ones the last step read (a thousand devices reporting every 10 s change a tenth of
        them a second). What it returns is shared: read it, never change it."""
        if not text:
            return None
        key = (device, column)
        seen = self._json.get(key)
        if seen is None or seen[0] != text:
            seen = self._json[key] = (text, json.loads(text))
        return seen[1]

    def views(self, model: str) -> dict[str, DeviceView]:
        return {d.id: codec.device_view(d.id, d.labels, d.online, d.report, model) for d in self.devices()}

    def record_reports(self, reports: Sequence[tuple[str, dict[str, Any], float]]) -> None:
        """(device, report, received at): the newest report of each device wins."""
        with self.transaction() as db:
            db.executemany("UPDATE devices SET report = ?, report_at = ? WHERE id = ? AND "
                           "(report_at IS NULL OR report_at <= ?)",
                           [(json.dumps(r), at, d, at) for d, r, at in reports])
            # Events a full outbox dropped never come: acknowledge past them, or the device's later events wait
            # behind that gap for ever (they are fed to rollouts only up to the first gap).
            skipped = [(_first_pending(r) - 1, d, _first_pending(r) - 1) for d, r, _ in reports
                       if _dropped(r) and _first_pending(r) > 1]
            db.executemany("UPDATE devices SET acked = ? WHERE id = ? AND acked < ?", skipped)

    def record_presence(self, device: str, online: bool, at: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE devices SET online = ?, presence_at = ? WHERE id = ?", (int(online), at, device))

    def record_events(self, events: Sequence[StoredEvent], now: float) -> dict[str, int]:
        """Store each event once; returns each sender's contiguous acknowledged sequence number."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO events (device, seq, kind, model, rollout, serial, body, "
                           "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(e.device, e.seq, e.kind, e.model, e.rollout, e.serial, json.dumps(e.body), now)
                            for e in events])
            acked = {}
            for device in {e.device for e in events}:
                (upto,) = db.execute("SELECT acked FROM devices WHERE id = ?", (device,)).fetchone()
                for (seq,) in db.execute("SELECT seq FROM events WHERE device = ? AND seq > ? ORDER BY seq",
                                         (device, upto)):
                    if seq != upto + 1:
                        break
                    upto = seq
                db.execute("UPDATE devices SET acked = ? WHERE id = ?", (upto, device))
                acked[device] = upto
            return acked

    def events(self, device: str | None = None, limit: int = 100) -> list[StoredEvent]:
        query = "SELECT device, seq, kind, model, rollout, serial, body FROM events"
        rows = (self.db.execute(query + " WHERE device = ? ORDER BY seq DESC LIMIT ?", (device, limit)) if device
                else self.db.execute(query + " ORDER BY received_at DESC LIMIT ?", (limit,))).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in reversed(rows)]

    def event_seqs(self, device: str) -> list[int]:
        return [s for (s,) in self.db.execute("SELECT seq FROM events WHERE device = ? ORDER BY seq", (device,))]

    def unprocessed(self, db: sqlite3.Connection, rollout: str) -> list[StoredEvent]:
        """A rollout's events not yet fed to it, each device's in its own order and only up to the first gap: a
        resent event may arrive after a later one (``verified`` before ``serving``), and is applied in turn."""
        rows = db.execute("SELECT e.device, e.seq, e.kind, e.model, e.rollout, e.serial, e.body FROM events e "
                          "JOIN devices d ON d.id = e.device WHERE e.rollout = ? AND e.processed = 0 "
                          "AND e.seq <= d.acked ORDER BY e.device, e.seq", (rollout,)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def mark_processed(self, db: sqlite3.Connection, events: Sequence[StoredEvent]) -> None:
        db.executemany("UPDATE events SET processed = 1 WHERE device = ? AND seq = ?",
                       [(e.device, e.seq) for e in events])

    # --- desired documents --------------------------------------------------------------------
    def next_serial(self, db: sqlite3.Connection, device: str) -> int:
        (serial,) = db.execute("SELECT next_serial FROM devices WHERE id = ?", (device,)).fetchone()
        db.execute("UPDATE devices SET next_serial = ? WHERE id = ?", (serial + 1, device))
        return int(serial)

    def put_desired(self, db: sqlite3.Connection, device: str, model: str, serial: int, rollout: str, intent: str,
                    doc: bytes, now: float) -> None:
        db.execute("INSERT INTO desired (device, model, serial, rollout, intent, doc, issued_at, published) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (device, model) DO UPDATE SET serial = excluded.serial,"
                   " rollout = excluded.rollout, intent = excluded.intent, doc = excluded.doc, "
                   "issued_at = excluded.issued_at, published = 0", (device, model, serial, rollout, intent, doc, now))

    def latest_serial(self, db: sqlite3.Connection, device: str, model: str) -> int | None:
        row = db.execute("SELECT serial FROM desired WHERE device = ? AND model = ?", (device, model)).fetchone()
        return None if row is None else int(row[0])

    def desired_documents(self, unpublished_only: bool) -> list[tuple[str, str, int, bytes]]:
        query = "SELECT device, model, serial, doc FROM desired" + (" WHERE published = 0" if unpublished_only else "")
        return [(r[0], r[1], r[2], bytes(r[3])) for r in self.db.execute(query).fetchall()]

    def mark_published(self, documents: Sequence[tuple[str, str, int]]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE desired SET published = 1 WHERE device = ? AND model = ? AND serial = ?", documents)

    # --- rollouts -----------------------------------------------------------------------------
    def add_rollout(self, rollout: Rollout, raw_plan: dict[str, Any], plan_file: bytes, signer: str) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout.id,)).fetchone():
                raise FleetError(f"rollout {rollout.id} exists already: give the new plan another rollout id")
            active = db.execute("SELECT id, state FROM rollouts WHERE model = ?", (rollout.plan.model,)).fetchall()
            for other, state in active:
                if json.loads(state)["phase"] not in FINAL_PHASES:
                    raise FleetError(f"rollout {other} of {rollout.plan.model} is still going: finish, or abort it "
                                     f"(orchestrate fleet rollout abort {other}), before starting another")
            db.execute("INSERT INTO rollouts (id, model, plan, plan_file, signer, state, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (rollout.id, rollout.plan.model, json.dumps(raw_plan), plan_file, signer,
                        json.dumps(codec.rollout_state(rollout)), rollout.created_at, rollout.created_at))
            self.save_assignments(db, rollout, {})

    def rollout_ids(self, active_only: bool = False) -> list[str]:
        rows = self.db.execute("SELECT id, state FROM rollouts ORDER BY created_at").fetchall()
        return [r[0] for r in rows if not active_only or json.loads(r[1])["phase"] not in FINAL_PHASES
                or self._reverting(r[0])]

    def _reverting(self, rollout: str) -> bool:
        return self.db.execute("SELECT 1 FROM assignments WHERE rollout = ? AND state = 'reverting' LIMIT 1",
                               (rollout,)).fetchone() is not None

    def load_rollout(self, db: sqlite3.Connection, rollout_id: str, build: Any) -> Rollout:
        """``build``: raw plan dict -> Plan (the plan was checked and its signature verified when it started)."""
        row = db.execute("SELECT plan, state FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            known = ", ".join(self.rollout_ids()) or "none"
            raise FleetError(f"no rollout {rollout_id!r} (rollouts: {known})")
        plan: Plan = build(json.loads(row[0]))
        rows = db.execute("SELECT rollout, device, wave, state, since, prev_version, version, detail, overdue "
                          "FROM assignments WHERE rollout = ?", (rollout_id,)).fetchall()
        assignments = {r[1]: codec.assignment_from_row(r) for r in rows}
        return codec.build_rollout(plan, json.loads(row[1]), assignments)

    def save_rollout(self, db: sqlite3.Connection, before: Rollout | None, after: Rollout, now: float,
                     lines: Sequence[str] = ()) -> None:
        db.execute("UPDATE rollouts SET state = ?, updated_at = ? WHERE id = ?",
                   (json.dumps(codec.rollout_state(after)), now, after.id))
        self.save_assignments(db, after, before.assignments if before else {})
        db.executemany("INSERT INTO history (rollout, at, line) VALUES (?, ?, ?)",
                       [(after.id, now, line) for line in lines])

    def save_assignments(self, db: sqlite3.Connection, rollout: Rollout, before: Mapping[str, Assignment]) -> None:
        changed = [a for d, a in rollout.assignments.items() if before.get(d) != a]
        db.executemany("INSERT INTO assignments (rollout, device, wave, state, since, prev_version, version, detail, "
                       "overdue) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout, device) DO UPDATE SET "
                       "wave = excluded.wave, state = excluded.state, since = excluded.since, "
                       "prev_version = excluded.prev_version, version = excluded.version, detail = excluded.detail, "
                       "overdue = excluded.overdue", [codec.assignment_row(rollout.id, a) for a in changed])

    def history(self, rollout: str, limit: int = 50) -> list[tuple[float, str]]:
        rows = self.db.execute("SELECT at, line FROM history WHERE rollout = ? ORDER BY rowid DESC LIMIT ?",
                               (rollout, limit)).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def plan_file(self, rollout: str) -> tuple[bytes, str]:
        row = self.db.execute("SELECT plan_file, signer FROM rollouts WHERE id = ?", (rollout,)).fetchone()
        if row is None:
            raise FleetError(f"no rollout {rollout!r}")
        return bytes(row[0]), row[1]

    # --- blocks and the notice ----------------------------------------------------------------
    def add_block(self, db: sqlite3.Connection, block: Block, rollout: str | None, now: float) -> None:
        db.execute("INSERT INTO blocks (id, model, sha256, selector, reason, rollout, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (block.id, block.model, block.sha256,
                                                    json.dumps(dict(block.selector), sort_keys=True), block.reason,
                                                    rollout, now))

    def lift_block(self, db: sqlite3.Connection, block_id: str, now: float) -> bool:
        return db.execute("UPDATE blocks SET lifted_at = ? WHERE id = ? AND lifted_at IS NULL",
                          (now, block_id)).rowcount > 0

    def blocks(self, db: sqlite3.Connection | None = None) -> list[Block]:
        rows = (db or self.db).execute("SELECT id, model, sha256, selector, reason FROM blocks WHERE lifted_at IS NULL "
                                       "ORDER BY created_at").fetchall()
        return [Block(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def put_notice(self, db: sqlite3.Connection, serial: int, doc: bytes, now: float) -> None:
        db.execute("INSERT INTO notices (serial, doc, issued_at) VALUES (?, ?, ?)", (serial, doc, now))

    def next_notice_serial(self, db: sqlite3.Connection) -> int:
        (last,) = db.execute("SELECT COALESCE(MAX(serial), 0) FROM notices").fetchone()
        return int(last) + 1

    def notice_unpublished(self) -> bool:
        return self.db.execute("SELECT 1 FROM notices WHERE published = 0 LIMIT 1").fetchone() is not None

    def mark_notice_published(self) -> None:
        with self.transaction() as db:
            db.execute("UPDATE notices SET published = 1")

    def notice(self) -> bytes | None:
        row = self.db.execute("SELECT doc FROM notices ORDER BY serial DESC LIMIT 1").fetchone()
        return None if row is None else bytes(row[0])
