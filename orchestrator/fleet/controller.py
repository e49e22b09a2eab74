"""The fleet controller's decisions applied to its store, without the network.

``ingest`` stores what devices sent (events once each, newest reports, presence) and says what to
acknowledge; ``tick`` takes one step of every active rollout in its own transaction (read the
rollout, feed it the events that answer its latest documents, step, write the result and the
signed documents it calls for) and returns the documents not yet published. The service
(``controller_service.py``) publishes them and marks them published; a document written but not
published when the controller dies goes out after the restart, and ``everything`` republishes all
of them after a broker restart (they are retained and numbered: a device applies each once).

Operator commands (``start``, ``pause``, ``resume``, ``abort``, ``block``, ``unblock``) are the same
kind of transaction, so they can run from another process while the service serves.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import FleetError
from orchestrator.fleet import rollout as steps
from orchestrator.fleet import topics
from orchestrator.fleet.documents import REVERT, Block, Desired, Notice, seal
from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.plan_file import read_signed_plan
from orchestrator.fleet.rollout import Event, Phase, Rollout, Step
from orchestrator.fleet.store import FleetStore, StoredEvent

log = logging.getLogger(__name__)

ROLLOUT_KINDS = ("applying", "serving", "verified", "failed", "reverted")
NOTICE, CLEAR = "notice", "clear"  # the model field of an Outgoing's key that is not a desired document


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool
    key: tuple[str, str, int] | None = None  # (device, model, serial) of a desired document, to mark published


class Controller:
    def __init__(self, store: FleetStore, key: Ed25519PrivateKey, release_keys: dict[str, Ed25519PublicKey],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.key = key
        self.release_keys = release_keys
        self.clock = clock

    # --- what devices send --------------------------------------------------------------------
    def ingest(self, messages: Sequence[tuple[str, bytes]]) -> list[Outgoing]:
        """Store a batch of (topic, payload); the acknowledgements to send once it is committed."""
        now = self.clock()
        events: list[StoredEvent] = []
        reports: list[tuple[str, dict[str, Any], float]] = []
        for topic, payload in messages:
            parsed = topics.parse(topic)
            if parsed is None:
                continue
            device, kind = parsed
            if not payload:  # a retained topic cleared (a retired device's, by this controller)
                continue
            if not self.store.known(device):
                log.warning("message from %s, which is not enrolled: ignored", device)
                continue
            if kind is topics.Kind.PRESENCE:
                self.store.record_presence(device, payload.strip() == b"online", now)
                continue
            body = _json(payload)
            if body is None:
                log.warning("%s sent a %s that is not a JSON object: ignored", device, kind.value)
                continue
            if kind is topics.Kind.REPORT:
                reports.append((device, body, now))
            elif kind is topics.Kind.EVENTS:
                event = _event(device, body)
                if event is None:
                    log.warning("%s sent an event without a sequence number: ignored", device)
                else:
                    events.append(event)
        if reports:
            self.store.record_reports(reports)
        if not events:
            return []
        acked = self.store.record_events(events, now)
        return [Outgoing(topics.ack(d), json.dumps({"upto": n}).encode(), False) for d, n in sorted(acked.items())]

    # --- operator commands --------------------------------------------------------------------
    def start(self, plan_path: Path) -> Rollout:
        plan, raw, data, signer = read_signed_plan(plan_path, self.release_keys)
        now = self.clock()
        views = self.store.views(plan.model)
        blocked = [b for b in self.store.blocks() if b.model == plan.model and b.sha256 == plan.package.sha256]
        if blocked:
            views = {d: v for d, v in views.items() if not any(b.applies_to(v.labels) for b in blocked)}
        rollout = steps.start(plan, views, now)
        if not rollout.assignments:
            raise FleetError(f"rollout {plan.id}: the selector ({plan.selector}) takes none of the "
                             f"{len(views)} enrolled devices")
        self.store.add_rollout(rollout, raw, data, signer)
        with self.store.transaction() as db:
            db.execute("INSERT INTO history (rollout, at, line) VALUES (?, ?, ?)",
                       (plan.id, now, f"started by release key {signer}: {len(rollout.assignments)} devices in "
                                      f"{len(plan.waves)} waves"))
        return rollout

    def pause(self, rollout_id: str, why: str = "paused by an operator") -> Rollout:
        return self._change(rollout_id, lambda r, now: Step(steps.pause(r, why), (), (f"paused: {why}",)))

    def resume(self, rollout_id: str) -> Rollout:
        def resumed(r: Rollout, now: float) -> Step:
            if r.phase not in (Phase.PAUSED, Phase.AWAITING_APPROVAL):
                raise FleetError(f"rollout {r.id} is {r.phase.value}, not paused or awaiting approval")
            after, lines = steps.resume(r, now)
            return Step(after, (), tuple(lines))
        return self._change(rollout_id, resumed)

    def abort(self, rollout_id: str, why: str = "aborted by an operator") -> Rollout:
        def aborted(r: Rollout, now: float) -> Step:
            if r.phase.final:
                raise FleetError(f"rollout {r.id} is {r.phase.value} already")
            return steps.halt(r, now, Phase.ABORTED, why)
        return self._change(rollout_id, aborted)

    def block(self, selector: dict[str, str], model: str, sha256: str, reason: str,
              rollout_id: str | None = None) -> Block:
        """A signed fleet notice: devices matching ``selector`` refuse ``sha256`` (and revert from it)."""
        new = Block(f"b-{uuid.uuid4().hex[:8]}", model, sha256, dict(selector), reason)
        now = self.clock()
        with self.store.transaction() as db:
            self.store.add_block(db, new, rollout_id, now)
            self._publish_notice(db, now)
            if rollout_id is not None and len(selector) == 1:
                ((label, value),) = selector.items()
                before = self.store.load_rollout(db, rollout_id, build_plan)
                result = steps.block(before, self.store.views(before.plan.model), (label, value), now)
                self._write(db, before, result, now)
        return new

    def accept_proposal(self, rollout_id: str) -> Block:
        with self.store.transaction() as db:
            r = self.store.load_rollout(db, rollout_id, build_plan)
        if r.phase is not Phase.BLOCK_PROPOSED or r.attribution is None:
            raise FleetError(f"rollout {rollout_id} proposes no block (it is {r.phase.value})")
        return self.block(r.attribution.selector, r.plan.model, r.plan.package.sha256,
                          f"rollout {rollout_id}: {r.attribution.describe()}", rollout_id)

    def unblock(self, block_id: str) -> None:
        now = self.clock()
        with self.store.transaction() as db:
            if not self.store.lift_block(db, block_id, now):
                known = ", ".join(b.id for b in self.store.blocks(db)) or "none"
                raise FleetError(f"no block {block_id!r} in force (blocks: {known})")
            self._publish_notice(db, now)

    def _change(self, rollout_id: str, change: Callable[[Rollout, float], Step]) -> Rollout:
        now = self.clock()
        with self.store.transaction() as db:
            before = self.store.load_rollout(db, rollout_id, build_plan)
            result = change(before, now)
            self._write(db, before, result, now)
        return result.rollout

    # --- the step -----------------------------------------------------------------------------
    def active(self) -> bool:
        """Whether a rollout is under way (running, paused or reverting): fresh reports may move it."""
        return bool(self.store.rollout_ids(active_only=True))

    def tick(self) -> list[Outgoing]:
        now = self.clock()
        for rollout_id in self.store.rollout_ids(active_only=True):
            with self.store.transaction() as db:
                before = self.store.load_rollout(db, rollout_id, build_plan)
                current, lines = self._feed(db, before)
                views = self.store.views(current.plan.model)
                result = steps.step(current, views, now)
                result = Step(result.rollout, result.tells, (*lines, *result.lines), result.block)
                self._write(db, before, result, now)
                if result.block is not None:
                    found = result.block
                    self.store.add_block(db, Block(f"b-{uuid.uuid4().hex[:8]}", current.plan.model,
                                                   current.plan.package.sha256, found.selector,
                                                   f"rollout {rollout_id}: {found.describe()}"), rollout_id, now)
                    self._publish_notice(db, now)
        return self.pending()

    def _feed(self, db: sqlite3.Connection, rollout: Rollout) -> tuple[Rollout, list[str]]:
        """The rollout after the events that answer each device's latest document."""
        events = self.store.unprocessed(db, rollout.id)
        lines = []
        for stored in events:
            latest = self.store.latest_serial(db, stored.device, rollout.plan.model)
            if latest is None or stored.serial != latest:
                continue  # an answer to a document since replaced
            kind, detail = stored.kind, str(stored.body.get("detail") or "")
            if kind == "refused":
                kind, detail = "failed", f"refused the document: {detail}"
            if kind not in ROLLOUT_KINDS:
                continue
            version = stored.body.get("version")
            at = stored.body.get("at")
            event = Event(stored.device, kind, float(at) if isinstance(at, (int, float)) else self.clock(),
                          version if isinstance(version, int) else None, detail)
            rollout, line = steps.on_event(rollout, event)
            if line:
                lines.append(line)
        self.store.mark_processed(db, events)
        return rollout, lines

    def _write(self, db: sqlite3.Connection, before: Rollout, result: Step, now: float) -> None:
        after = result.rollout
        plan = after.plan
        for tell in result.tells:
            serial = self.store.next_serial(db, tell.device)
            desired = Desired(device=tell.device, serial=serial, issued_at=now, expires_at=now + plan.document_ttl_s,
                              model=plan.model, intent=tell.intent, package=plan.package, rollout=plan.id,
                              bake_s=plan.waves[after.assignments[tell.device].wave].bake_s,
                              revert_to=tell.revert_to if tell.intent == REVERT else None)
            self.store.put_desired(db, tell.device, plan.model, serial, plan.id, tell.intent,
                                   seal(desired.to_json(), self.key), now)
        self.store.save_rollout(db, before, after, now, result.lines)
        for line in result.lines:
            log.info("rollout %s: %s", after.id, line)

    def _publish_notice(self, db: sqlite3.Connection, now: float) -> None:
        serial = self.store.next_notice_serial(db)
        notice = Notice(serial, now, tuple(self.store.blocks(db)))
        self.store.put_notice(db, serial, seal(notice.to_json(), self.key), now)

    # --- what to publish ----------------------------------------------------------------------
    def pending(self) -> list[Outgoing]:
        return self._documents(unpublished_only=True)

    def everything(self) -> list[Outgoing]:
        """Every retained document, for a broker that lost them (restarted without persistence)."""
        found = self._documents(unpublished_only=False)
        notice = self.store.notice()
        if notice is not None:
            found.append(Outgoing(topics.FLEET_NOTICE, notice, True))
        return found

    def _documents(self, unpublished_only: bool) -> list[Outgoing]:
        found = [Outgoing(topics.desired(device, model), doc, True, (device, model, serial))
                 for device, model, serial, doc in self.store.desired_documents(unpublished_only)]
        if unpublished_only and self.store.notice_unpublished():
            notice = self.store.notice()
            if notice is not None:
                found.append(Outgoing(topics.FLEET_NOTICE, notice, True, ("", NOTICE, 0)))
        if unpublished_only:  # an empty retained message clears a retired device's topic
            found += [Outgoing(topic, b"", True, (topic, CLEAR, 0)) for topic in self.store.pending_clears()]
        return found

    def published(self, sent: Sequence[Outgoing]) -> None:
        documents = [o.key for o in sent if o.key is not None and o.key[1] not in (NOTICE, CLEAR)]
        if documents:
            self.store.mark_published(documents)
        if any(o.key is not None and o.key[1] == NOTICE for o in sent):
            self.store.mark_notice_published()
        cleared = [o.key[0] for o in sent if o.key is not None and o.key[1] == CLEAR]
        if cleared:
            self.store.mark_cleared(cleared)


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _event(device: str, body: dict[str, Any]) -> StoredEvent | None:
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    serial = body.get("serial")
    return StoredEvent(device, seq, str(body.get("kind", "")), _str(body.get("model")), _str(body.get("rollout")),
                       serial if isinstance(serial, int) and not isinstance(serial, bool) else None, body)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
