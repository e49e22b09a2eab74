"""The device side of fleet rollouts: a sans-I/O agent beside the watcher.

The agent never decides what serves on its own: it turns the controller's signed desired documents
into the same import / promote / rollback use cases the CLI runs (the local gates and the watcher's
automatic rollback stay as they are, and need no uplink), and tells the controller what happened.

Messages in, messages out, no sockets: each handler takes a message's bytes and returns the
``Outgoing`` messages to publish; blocking work (download, import, promote, rollback) is queued as a
``Job`` for ``run_job``, which a runner calls in a worker thread, one at a time per device
(``agent_runner.py``); ``tick`` mirrors the journal, ends bakes, resends unacknowledged events and
produces the periodic report. Every method takes the agent's lock around its state, so a runner may
call the handlers and ``tick`` while a job runs.

    on_desired   open_sealed + accept_desired; refusals journaled and sent as ``refused`` events
    on_notice    accept_notice; blocks that apply to this device's labels are acted on (``block``)
    on_ack       {"upto": n}: events up to n leave the outbox
    tick(now)    journal mirror, bake ends, resends, the report when due

Events (topic ``orch/v1/dev/{id}/events``) are numbered 1, 2, 3... for the device's lifetime and kept
in the outbox (``agent_state.py``) until acknowledged: applying, serving, verified, failed (with
``data.cause``), reverted, refused (with ``data.reason``), journal (every new record of a driven
model's journal), block. The state is written after every step, so a killed agent resumes the step
it was in and never applies anything twice: the same serial as an unfinished document resumes it, the
same serial as a finished one is ignored, a lower one is refused as replayed.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.core.model import VersionStatus
from orchestrator.delivery.fetch import fetch
from orchestrator.delivery.signing import load_trusted_keys, require_distinct_keys
from orchestrator.errors import DocumentRefused, OrchestratorError, PackageRejected, PolicyViolation, UsageError
from orchestrator.fleet import topics
from orchestrator.fleet.agent_report import (
    detect_facts,
    gated_metric,
    golden_of,
    model_report,
    read_stats,
    report_facts,
)
from orchestrator.fleet.agent_state import (
    ACCEPTED,
    FAILED,
    IMPORTED,
    IN_PROGRESS,
    OUTBOX_LIMIT,
    REVERTED,
    SERVING,
    SUPERSEDED,
    VERIFIED,
    WATCHED,
    Away,
    ModelState,
    load_state,
    save_state,
)
from orchestrator.fleet.counters import CounterBook
from orchestrator.fleet.documents import (
    INSTALL,
    MISADDRESSED,
    REPLAYED,
    Block,
    Desired,
    accept_desired,
    accept_notice,
    open_sealed,
    parse_desired,
)
from orchestrator.store.file_keys import Keys
from orchestrator.store.journal import Cursor, Journal
from orchestrator.store.repository import ModelStore
from orchestrator.triton.control import one_line
from orchestrator.triton.protocol import TritonAPI
from orchestrator.usecases.orchestrator import Orchestrator

log = logging.getLogger(__name__)

FLEET_FOLDER = "fleet"  # under the state folder
FLEET_ACTOR = "fleet"  # the actor of the agent's own journal records and switches
WATCH_ACTOR = "watch"
# Event kinds (rollout.Event takes applying, serving, verified, failed, reverted).
APPLYING, SERVING_EVENT, VERIFIED_EVENT, FAILED_EVENT, REVERTED_EVENT = (
    "applying", "serving", "verified", "failed", "reverted")
REFUSED, JOURNAL, BLOCK = "refused", "journal", "block"
# failed events' data.cause
FETCH, IMPORT, PROMOTE, ROLLBACK, BLOCKED, DOCUMENT = "fetch", "import", "promote", "rollback", "blocked", "document"
INSTALL_JOB, REVERT_JOB, BLOCK_JOB = "install", "revert", "block"
RESEND_BATCH = 1000  # unacknowledged events sent again per resend, oldest first
REPORT_GAP_S = 1.0  # the report that follows events waits at least this long after the last one
ONLINE, OFFLINE = b"online", b"offline"

Fetcher = Callable[[str, Path, str], Path]


@dataclass(frozen=True)
class Outgoing:
    """One message to publish."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True)
class AgentOptions:
    device: str
    labels: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)
    models: tuple[str, ...] | None = None  # None: every managed model of the repository
    report_s: float = 10.0
    resend_s: float = 5.0
    journal_s: float = 1.0  # how often the journals are looked at (a watcher's rollback reaches the controller)
    outbox_limit: int = OUTBOX_LIMIT


@dataclass(frozen=True)
class Job:
    """Blocking work for ``run_job``: a desired document of a model (``key`` its serial), or a block (its id)."""

    kind: str
    model: str
    key: str


def _claimed_model(payload: bytes) -> str | None:
    """The model an unverified document names: only to choose the journal its refusal goes to."""
    try:
        model = json.loads(payload)["doc"]["model"]
    except (ValueError, KeyError, TypeError):
        return None
    return model if isinstance(model, str) else None


def _file_name(url: str) -> str:
    return posixpath.basename(unquote(urlsplit(url).path)) or "package.tar.gz"


class Agent:
    """One device's fleet agent. ``orchestrator`` runs the use cases (its Triton a server or a twin), with
    the actor ``fleet`` by convention; ``stats`` is the Triton the reports read (its own connection on a
    real server: clients are not thread-safe); ``clock`` gives seconds since the epoch."""

    def __init__(self, orchestrator: Orchestrator, options: AgentOptions,
                 controller_keys: Mapping[str, Ed25519PublicKey], *, clock: Callable[[], float] = time.time,
                 stats: TritonAPI | None = None, fetcher: Fetcher | None = None) -> None:
        self.orch = orchestrator
        self.options = options
        self.device = topics.check_device_id(options.device)
        self.labels = dict(options.labels)
        self.keys = dict(controller_keys)
        _require_own_controller_keys(orchestrator, self.keys)
        self.clock = clock
        self.stats = stats or orchestrator.triton
        self.fetcher: Fetcher = fetcher or (lambda url, dest, sha: fetch(url, dest, sha, name=_file_name(url)))
        self.actor = orchestrator.settings.actor
        assert orchestrator.settings.state_dir is not None
        self.folder = orchestrator.settings.state_dir / FLEET_FOLDER
        self.downloads = self.folder / "downloads"
        self.journal = Journal(self.folder / "journal.log")  # the device's own: refusals of no model, drops
        self.models = tuple(options.models) if options.models else tuple(orchestrator.repository.models())
        self.stores = {name: orchestrator.repository.model(name) for name in self.models}  # UnknownModel
        self._store_facts = {name: report_facts(store) for name, store in self.stores.items()}
        self._journal_keys = {name: Keys(store.journal.path) for name, store in self.stores.items()}
        self._lock = threading.RLock()
        self.state = load_state(self.folder)
        self.book = CounterBook(self.state.counters)
        self._jobs: deque[Job] = deque()
        self._sent: dict[int, float] = {}  # seq -> when last sent, this connection
        self._facts: dict[str, str | None] | None = None
        now = clock()
        self._next_journal = self._next_resend = self._next_report = now
        self._last_report = float("-inf")
        self._begin()

    # --- start ------------------------------------------------------------------------------
    def _begin(self) -> None:
        """Journals mirrored from their end on the first start; unfinished work queued again."""
        with self._lock:
            for name, store in self.stores.items():
                fleet = self.state.model(name)
                if fleet.cursor is None:
                    records, end = store.journal.read_since(Cursor(0, 0))
                    for record in records:
                        self._count_away(fleet, record)
                    fleet.cursor = (end.segment, end.offset)
                if fleet.in_progress and fleet.doc is not None:
                    intent = INSTALL_JOB if fleet.doc.get("intent") == INSTALL else REVERT_JOB
                    self._queue(Job(intent, name, str(fleet.serial)))
            for block in self._applicable_blocks():
                if block.id not in self.state.applied_blocks:
                    self._queue(Job(BLOCK_JOB, block.model, block.id))
            self._save()

    @property
    def subscriptions(self) -> list[str]:
        return topics.device_filters(self.device)

    @property
    def will(self) -> Outgoing:
        return Outgoing(topics.presence(self.device), OFFLINE, retain=True)

    # --- messages in ----------------------------------------------------------------------
    def on_connect(self) -> list[Outgoing]:
        """After every (re)connect: presence, the report, and every unacknowledged event again."""
        with self._lock:
            self._sent.clear()
            events = self._resend(self.clock(), everything=True)
        return [Outgoing(topics.presence(self.device), ONLINE, retain=True), self.report(), *events]

    def on_message(self, topic: str, payload: bytes) -> list[Outgoing]:
        desired = topics.topic(self.device, topics.Kind.DESIRED) + "/"
        if topic.startswith(desired):
            return self.on_desired(topic[len(desired):], payload)
        if topic == topics.ack(self.device):
            return self.on_ack(payload)
        if topic == topics.FLEET_NOTICE:
            return self.on_notice(payload)
        log.info("%s: ignored a message on %s", self.device, topic)
        return []

    def on_desired(self, model: str | None, payload: bytes) -> list[Outgoing]:
        """A desired document from ``orch/v1/dev/{id}/desired/{model}`` (None: no topic says which model)."""
        try:
            doc = open_sealed(payload, self.keys)
        except DocumentRefused as exc:
            return self._refused(exc, model or _claimed_model(payload), None, "desired")
        with self._lock:
            named = doc.get("model") if isinstance(doc.get("model"), str) else model
            try:
                desired = self._accepted(doc, model)
            except DocumentRefused as exc:
                return self._refused(exc, named, doc, "desired")
            if desired is None:
                return []
            return self._accept(desired, doc)

    def _accepted(self, doc: dict[str, Any], topic_model: str | None) -> Desired | None:
        """The document to apply; None for the one being (or already) applied; DocumentRefused otherwise."""
        desired = parse_desired(doc)
        if topic_model is not None and desired.model != topic_model:
            raise DocumentRefused(MISADDRESSED, f"a document for model {desired.model!r} on {topic_model!r}'s topic")
        if desired.model not in self.stores:
            raise DocumentRefused(MISADDRESSED, f"model {desired.model!r} is not one the fleet drives on this "
                                                f"device ({', '.join(self.models) or 'none'})")
        fleet = self.state.model(desired.model)
        if desired.device == self.device and desired.serial == fleet.serial and fleet.doc is not None:
            if doc != fleet.doc:
                raise DocumentRefused(REPLAYED, f"serial {desired.serial} again, with other content")
            if fleet.in_progress:  # after a restart: resume it
                self._queue(Job(INSTALL_JOB if desired.intent == INSTALL else REVERT_JOB, desired.model,
                                str(desired.serial)))
            return None
        return accept_desired(doc, self.device, fleet.serial, self.clock())

    def _accept(self, desired: Desired, doc: dict[str, Any]) -> list[Outgoing]:
        model, sha = desired.model, desired.package.sha256.lower()
        fleet = self.state.model(model)
        if fleet.in_progress:
            fleet.stage = SUPERSEDED  # its job sees this at its next step and stops there
        cursor = self.stores[model].journal.cursor()
        fleet.serial, fleet.doc, fleet.version, fleet.serving_at = desired.serial, doc, None, None
        fleet.since, fleet.stage = (cursor.segment, cursor.offset), ACCEPTED
        self._record(model, Result.STEP, f"accepted {desired.intent} of {sha[:12]} (rollout {desired.rollout}, "
                                         f"serial {desired.serial})", self._doc_details(desired, step="accepted"))
        if desired.intent != INSTALL:
            self._queue(Job(REVERT_JOB, model, str(desired.serial)))
            self._save()
            return []
        if self._blocked(model, sha):
            return self._fail(desired, BLOCKED, f"package {sha[:12]} is blocked on this device by a fleet notice")
        if fleet.refused.get(sha) == desired.rollout:
            return self._fail(desired, DOCUMENT, f"package {sha[:12]} was reverted in rollout {desired.rollout}")
        served = self.stores[model].served()
        if served is not None and served != fleet.installed.get(sha):
            fleet.before[sha] = served
        self._queue(Job(INSTALL_JOB, model, str(desired.serial)))
        return self._emit([self._event(APPLYING, model, desired, version=served,
                                       detail=f"installing {sha[:12]} from {desired.package.url}")])

    def on_notice(self, payload: bytes) -> list[Outgoing]:
        try:
            doc = open_sealed(payload, self.keys)
        except DocumentRefused as exc:
            return self._refused(exc, None, None, "notice")
        with self._lock:
            try:
                notice = accept_notice(doc, self.state.notice_serial)
            except DocumentRefused as exc:
                return self._refused(exc, None, doc, "notice")
            if notice.serial == self.state.notice_serial and [b.to_json() for b in notice.blocks] == \
                    self.state.blocks:
                return []
            self.state.notice_serial, self.state.blocks = notice.serial, [b.to_json() for b in notice.blocks]
            for block in self._applicable_blocks():
                if block.id not in self.state.applied_blocks:
                    self._record(block.model, Result.STEP, f"block {block.id} of {block.sha256[:12]} in force "
                                                           f"(notice {notice.serial}): {block.reason}",
                                 {"step": "block", "block": block.to_json(), "notice": notice.serial})
                    self._queue(Job(BLOCK_JOB, block.model, block.id))
            self._save()
        return []

    def on_ack(self, payload: bytes) -> list[Outgoing]:
        try:
            upto = json.loads(payload)["upto"]
        except (ValueError, KeyError, TypeError):
            upto = None
        if not isinstance(upto, int) or isinstance(upto, bool):
            log.warning("%s: ignored an acknowledgement that is not {\"upto\": n}: %r", self.device, payload[:80])
            return []
        with self._lock:
            upto = min(upto, self.state.seq)
            if upto <= self.state.acked:
                return []
            self.state.acked = upto
            self.state.outbox = [e for e in self.state.outbox if e["seq"] > upto]
            for seq in [s for s in self._sent if s <= upto]:
                del self._sent[seq]
            self._save()
        return []

    # --- time -----------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[Outgoing]:
        """What is due: the journal mirror, bake ends, resends, the report."""
        now = self.clock() if now is None else now
        out: list[Outgoing] = []
        with self._lock:
            if now >= self._next_journal:
                self._next_journal = now + self.options.journal_s
                out += self._mirror()
            out += self._bake(now)
            if now >= self._next_resend:
                self._next_resend = now + self.options.resend_s
                out += self._resend(now)
        if now >= self._next_report:
            out.append(self.report(now))
        return out

    def next_due(self) -> float:
        """When ``tick`` has something to do next (clock time)."""
        with self._lock:
            due = [self._next_journal, self._next_report]
            if self.state.outbox:
                due.append(self._next_resend)
            for fleet in self.state.models.values():
                if fleet.stage == SERVING and fleet.serving_at is not None and fleet.doc is not None:
                    due.append(fleet.serving_at + float(fleet.doc.get("bake_s", 0.0)))
        return min(due)

    # --- work -----------------------------------------------------------------------------
    def next_job(self) -> Job | None:
        with self._lock:
            return self._jobs.popleft() if self._jobs else None

    def pending_jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs)

    def work(self) -> list[Outgoing]:
        """Every queued job, in order (tests and callers without a worker thread)."""
        out: list[Outgoing] = []
        while (job := self.next_job()) is not None:
            out += self.run_job(job)
        return out

    def run_job(self, job: Job) -> list[Outgoing]:
        """One job, blocking (downloads, Triton): call it from a worker thread."""
        if job.kind == BLOCK_JOB:
            return self._apply_block(job.model, job.key)
        with self._lock:
            fleet = self.state.model(job.model)
            if fleet.doc is None or str(fleet.serial) != job.key or not fleet.in_progress:
                return []  # finished or superseded meanwhile
            desired = parse_desired(fleet.doc)
        return self._install(desired) if desired.intent == INSTALL else self._revert(desired)

    def _current(self, desired: Desired) -> ModelState | None:
        """The model's state while ``desired`` is still the document in progress."""
        fleet = self.state.model(desired.model)
        return fleet if fleet.serial == desired.serial and fleet.stage in IN_PROGRESS else None

    def _install(self, desired: Desired) -> list[Outgoing]:
        model, sha = desired.model, desired.package.sha256.lower()
        store = self.stores[model]
        with self._lock:
            fleet = self._current(desired)
            if fleet is None:
                return []
            if self._blocked(model, sha):
                return self._fail(desired, BLOCKED, f"package {sha[:12]} is blocked on this device by a fleet notice")
            version = fleet.installed.get(sha) if fleet.installed.get(sha) in store.versions() else None
            since = Cursor(*fleet.since) if fleet.since else store.journal.cursor()
        if version is None:
            try:
                path = self.fetcher(desired.package.url, self.downloads / sha, sha)
            except (OrchestratorError, OSError) as exc:
                return self._fail(desired, FETCH, exc)
            version = _imported_since(store, since, path)  # filed before a kill, not yet in our state
            if version is None:
                with self._lock:
                    if self._current(desired) is None:
                        return []
                try:
                    result = self.orch.import_package(path)
                except (OrchestratorError, OSError) as exc:
                    if isinstance(exc, PackageRejected):  # what arrived is wrong: a later try downloads it anew
                        shutil.rmtree(self.downloads / sha, ignore_errors=True)
                    return self._fail(desired, IMPORT, exc)
                if result.model != model:
                    return self._fail(desired, IMPORT, f"the package is {result.model} v{result.version}, the "
                                                       f"document installs {model}")
                version = result.version
            with self._lock:
                fleet.installed[sha] = version
                if fleet.stage == ACCEPTED:
                    fleet.stage, fleet.version = IMPORTED, version
                self._save()
            shutil.rmtree(self.downloads / sha, ignore_errors=True)
        with self._lock:
            if self._current(desired) is None:
                return []
            fleet.version = version
            if self._blocked(model, sha):
                return self._fail(desired, BLOCKED, f"package {sha[:12]} is blocked on this device by a fleet notice")
        if store.served() != version and not _promoted_since(store, since, version):
            try:
                self.orch.promote(model, version, force=self._lifted_block_quarantine(store, version))
            except OrchestratorError as exc:
                return self._fail(desired, PROMOTE, exc)
        return self._serving(desired, version)

    def _serving(self, desired: Desired, version: int) -> list[Outgoing]:
        snap = self.stores[desired.model].snapshot()
        golden, diff = golden_of(snap, version, gated_metric(snap))
        with self._lock:
            fleet = self._current(desired)
            if fleet is None:
                return []  # a newer document arrived while it promoted: its job takes it from here
            fleet.stage, fleet.version, fleet.serving_at = SERVING, version, self.clock()
            fleet.others_at_serving = fleet.away.get(version, Away()).others
            self._record(desired.model, Result.STEP, f"v{version} serving; verified after {desired.bake_s:g} s clean",
                         self._doc_details(desired, step="serving", version=version))
            return self._emit([self._event(SERVING_EVENT, desired.model, desired, version=version,
                                           detail=f"v{version} serves", data={"golden": golden,
                                                                               "golden_diff": diff})])

    def _revert(self, desired: Desired) -> list[Outgoing]:
        model, sha, target = desired.model, desired.package.sha256.lower(), desired.revert_to
        store = self.stores[model]
        with self._lock:
            fleet = self._current(desired)
            if fleet is None:
                return []
            fleet.refused[sha] = desired.rollout
            installed = fleet.installed.get(sha)
            self._save()
        served = store.served()
        if installed is not None and served == installed and served != target:
            try:
                self.orch.rollback(model, to=target, reason=f"fleet: rollout {desired.rollout} reverted")
            except OrchestratorError as exc:
                return self._fail(desired, ROLLBACK, exc)
            detail, served = f"rolled back v{installed} -> v{target}", target
        elif installed is None:
            detail = f"never installed {sha[:12]}: v{served} serves, nothing to revert"
        elif served == target:
            detail = f"v{target} serves already (v{installed} rolled back before)"
        else:
            detail = f"v{served} serves, not v{installed} from {sha[:12]}: nothing to revert"
        with self._lock:
            fleet = self._current(desired)
            if fleet is None:
                return []
            fleet.stage = REVERTED
            self._record(model, Result.SUCCEEDED, f"reverted: {detail}", self._doc_details(desired, step="reverted"))
            return self._emit([self._event(REVERTED_EVENT, model, desired, version=served, detail=detail)])

    def _apply_block(self, model: str, block_id: str) -> list[Outgoing]:
        with self._lock:
            block = next((b for b in self._applicable_blocks() if b.id == block_id and b.model == model), None)
            if block is None or block_id in self.state.applied_blocks:
                return []  # lifted before it was acted on, or done
            fleet = self.state.model(model)
            installed, before = fleet.installed.get(block.sha256), fleet.before.get(block.sha256)
        store = self.stores[model]
        served = store.served()
        data: dict[str, Any] = {"block": block.id, "sha256": block.sha256, "rolled_back": False}
        if installed is not None and served == installed:
            to = before if before is not None and before != installed and before in store.versions() else None
            reason = f"fleet: block {block.id}: {block.reason}"
            try:
                try:
                    result = self.orch.rollback(model, to=to, reason=reason, quarantine=True)
                except PolicyViolation:
                    if to is None:
                        raise
                    # What served before cannot serve now (not verified any more): the last verified version.
                    result = self.orch.rollback(model, reason=reason, quarantine=True)
                detail, served = f"rolled back v{installed} -> v{result.to_version} (quarantined)", result.to_version
                data.update({"rolled_back": True, "from": installed, "to": result.to_version})
            except OrchestratorError as exc:
                detail = f"could not roll back v{installed}: {one_line(str(exc))}"
                data["error"] = one_line(str(exc))
        else:
            detail = f"does not serve {block.sha256[:12]}" + (f" (v{installed})" if installed is not None else "")
        with self._lock:
            self.state.applied_blocks.append(block.id)
            out = []
            current = parse_desired(fleet.doc) if fleet.doc is not None else None
            if current is not None and current.intent == INSTALL and current.package.sha256.lower() == block.sha256:
                out += self._fail(current, BLOCKED, f"blocked by {block.id}: {block.reason}")
            self._record(model, Result.SUCCEEDED, f"block {block.id}: {detail}",
                         {"step": "block", "block": block.to_json(), **data})
            return out + self._emit([self._event(BLOCK, model, None, version=served, detail=detail, data=data,
                                                 serial=self.state.notice_serial)])

    # --- the journal, bakes ---------------------------------------------------------------
    def _count_away(self, fleet: ModelState, record: Record) -> None:
        if record.action is not Action.ROLLBACK or record.result not in (Result.SUCCEEDED, Result.REPAIRED) \
                or record.from_version is None:
            return
        away = fleet.away.setdefault(record.from_version, Away())
        if record.actor == WATCH_ACTOR:
            away.automatic += 1
        if record.actor != self.actor:
            away.others += 1
            away.reason = record.reason or f"rolled back by {record.actor or 'someone'}"

    def _mirror(self) -> list[Outgoing]:
        events = []
        for name, store in self.stores.items():
            changed, keys = self._journal_keys[name].changed()  # a stat, not a read, while nothing is appended
            if not changed:
                continue
            fleet = self.state.model(name)
            cursor = Cursor(*fleet.cursor) if fleet.cursor else store.journal.cursor()
            records, end = store.journal.read_since(cursor)
            fleet.cursor = (end.segment, end.offset)
            for record in records:
                self._count_away(fleet, record)
                events.append(self._event(JOURNAL, name, None, version=record.to_version, detail=record.reason,
                                          data={"action": record.action.value, "result": record.result.value,
                                                "from": record.from_version, "to": record.to_version,
                                                "op": record.op, "actor": record.actor, "time": record.time,
                                                "reason": record.reason}))
            if (end.segment, end.offset) != (cursor.segment, cursor.offset) and not records:
                self._save()
            self._journal_keys[name].remember(keys)
        return self._emit(events) if events else []

    def _bake(self, now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        for name, fleet in self.state.models.items():
            if fleet.stage not in WATCHED or fleet.doc is None or fleet.version is None:
                continue
            desired, version = parse_desired(fleet.doc), fleet.version
            away = fleet.away.get(version, Away())
            if away.others > fleet.others_at_serving:
                out += self._fail(desired, ROLLBACK, away.reason, watched=True)
                continue
            if fleet.stage != SERVING:
                continue
            served = self.stores[name].served()
            if served != version:
                out += self._fail(desired, ROLLBACK, f"v{version} no longer serves (v{served} does)", watched=True)
            elif fleet.serving_at is not None and now >= fleet.serving_at + desired.bake_s:
                fleet.stage = VERIFIED
                self._record(name, Result.SUCCEEDED, f"v{version} verified for the fleet after {desired.bake_s:g} s "
                                                     f"clean", self._doc_details(desired, step="verified",
                                                                                 version=version))
                out += self._emit([self._event(VERIFIED_EVENT, name, desired, version=version,
                                               detail=f"v{version} served {desired.bake_s:g} s without a rollback")])
        return out

    # --- outcomes -------------------------------------------------------------------------
    def _fail(self, desired: Desired, cause: str, error: object, watched: bool = False) -> list[Outgoing]:
        """``desired`` failed (when it is still the model's document): journaled, a ``failed`` event."""
        detail = one_line(str(error))
        with self._lock:
            fleet = self.state.model(desired.model)
            if fleet.serial != desired.serial or fleet.stage not in (*IN_PROGRESS, *WATCHED) \
                    or (watched and fleet.stage not in WATCHED):
                return []
            fleet.stage = FAILED
            self._record(desired.model, Result.FAILED, detail, self._doc_details(desired, step="failed", cause=cause))
            return self._emit([self._event(FAILED_EVENT, desired.model, desired, version=fleet.version,
                                           detail=detail, data={"cause": cause})])

    def _refused(self, exc: DocumentRefused, model: str | None, doc: Mapping[str, Any] | None,
                 what: str) -> list[Outgoing]:
        """A document turned away: journaled (the model's journal when it names a driven model, else the
        device's fleet journal) and a ``refused`` event; rollout and serial only from a verified document."""
        rollout = doc.get("rollout") if doc is not None and isinstance(doc.get("rollout"), str) else None
        serial = doc.get("serial") if doc is not None and isinstance(doc.get("serial"), int) else None
        driven = model if model in self.stores else None
        details = {"document": what, "reason": exc.reason, "rollout": rollout, "serial": serial}
        log.warning("%s: refused a %s document: %s", self.device, what, exc)
        with self._lock:
            self._record(driven, Result.REFUSED, f"{what} document refused: {exc}", details)
            event = self._event(REFUSED, driven, None, detail=one_line(str(exc)),
                                data={"reason": exc.reason, "document": what, "names_model": model})
            event.update(rollout=rollout, serial=serial)
            return self._emit([event])

    # --- events ---------------------------------------------------------------------------
    def _event(self, kind: str, model: str | None, desired: Desired | None, version: int | None = None,
               detail: str = "", data: Mapping[str, Any] | None = None, serial: int | None = None) -> dict[str, Any]:
        """An event (numbered when it enters the outbox)."""
        return {"device": self.device, "seq": 0, "at": self.clock(), "kind": kind, "model": model,
                "rollout": desired.rollout if desired else None,
                "serial": desired.serial if desired else serial, "version": version, "detail": detail,
                "data": dict(data or {})}

    def _add(self, event: dict[str, Any]) -> None:
        self.state.seq += 1
        event["seq"] = self.state.seq
        self.state.outbox.append(event)
        excess = len(self.state.outbox) - self.options.outbox_limit
        if excess > 0:
            gone = self.state.outbox[:excess]
            del self.state.outbox[:excess]
            self.state.dropped += excess
            self._record(None, Result.ALERT, f"outbox full ({self.options.outbox_limit} unacknowledged events): "
                                             f"events {gone[0]['seq']}..{gone[-1]['seq']} dropped, "
                                             f"{self.state.dropped} in all",
                         {"dropped": excess, "first": gone[0]["seq"], "last": gone[-1]["seq"]})
        self._next_report = min(self._next_report, max(self.clock(), self._last_report + REPORT_GAP_S))

    def _emit(self, events: Iterable[dict[str, Any]]) -> list[Outgoing]:
        """Numbered, into the outbox, saved; their messages for a first send."""
        now = self.clock()
        out = []
        for event in events:
            self._add(event)
            self._sent[event["seq"]] = now
            out.append(self._message(event))
        self._save()
        return out

    def _message(self, event: Mapping[str, Any]) -> Outgoing:
        return Outgoing(topics.events(self.device), json.dumps(event, sort_keys=True, separators=(",", ":")).encode())

    def _resend(self, now: float, everything: bool = False) -> list[Outgoing]:
        out = []
        for event in self.state.outbox:
            if len(out) >= RESEND_BATCH:
                break
            sent = self._sent.get(event["seq"])
            if everything or sent is None or now - sent >= self.options.resend_s:
                self._sent[event["seq"]] = now
                out.append(self._message(event))
        return out

    # --- the report -----------------------------------------------------------------------
    def report(self, now: float | None = None) -> Outgoing:
        """The device's report (retained): facts, serials, and per driven model what serves and its counters."""
        now = self.clock() if now is None else now
        if self._facts is None:
            self._facts = detect_facts(self.stats, self.options.facts)
        models: dict[str, Any] = {}
        for name in self.stores:
            stats = read_stats(self.stats, name)
            try:
                facts = self._store_facts[name]()
            except OrchestratorError as exc:
                log.error("%s: %s left out of the report: %s", self.device, name, exc)
                continue
            with self._lock:
                for version, counts in stats.items():
                    self.book.observe(name, version, counts)
                models[name] = model_report(facts, self.book, self.state.model(name), name)
        with self._lock:
            self._last_report, self._next_report = now, now + self.options.report_s
            if self.book.changed:
                self._save()
            body = {"device": self.device, "at": now, "labels": self.labels, "facts": self._facts,
                    "desired_serial": {m: s.serial for m, s in sorted(self.state.models.items())
                                       if m in self.stores and s.serial},
                    "notice_serial": self.state.notice_serial, "last_seq": self.state.seq,
                    "outbox": {"pending": len(self.state.outbox), "dropped": self.state.dropped,
                               "first": self.state.outbox[0]["seq"] if self.state.outbox else self.state.seq + 1},
                    "models": models}
        return Outgoing(topics.report(self.device), json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                        retain=True)

    # --- helpers --------------------------------------------------------------------------
    def _applicable_blocks(self) -> list[Block]:
        found = []
        for raw in self.state.blocks:
            block = Block(raw["id"], raw["model"], str(raw["sha256"]).lower(), dict(raw["selector"]),
                          raw.get("reason", ""))
            if block.model in self.stores and block.applies_to(self.labels):
                found.append(block)
        return found

    def _lifted_block_quarantine(self, store: ModelStore, version: int) -> bool:
        """Whether ``version`` is quarantined only by a fleet block no longer in force: the controller lifted
        the block and tells the device to install it again, so that quarantine no longer stands. One the
        watcher put there (its own evidence on this device) still refuses the promote."""
        snap = store.snapshot()
        if snap.status(version) is not VersionStatus.QUARANTINED:
            return False
        reason = snap.attestation(version).verification.reason or ""
        match = re.match(r"fleet: block (\S+): ", reason)
        return match is not None and all(b.id != match.group(1) for b in self._applicable_blocks())

    def _blocked(self, model: str, sha: str) -> bool:
        return any(b.model == model and b.sha256 == sha for b in self._applicable_blocks())

    def _queue(self, job: Job) -> None:
        if job not in self._jobs:
            self._jobs.append(job)

    def _record(self, model: str | None, result: Result, reason: str, details: Mapping[str, Any]) -> None:
        """A record in the model's journal (None: the device's fleet journal); a full disk is logged, not fatal."""
        journal = self.stores[model].journal if model is not None else self.journal
        try:
            journal.append(Record(Action.FLEET, result, new_op_id(), actor=self.actor, reason=reason,
                                  details=dict(details)))
        except (OrchestratorError, OSError) as exc:
            log.error("%s: could not journal %r: %s", self.device, reason, exc)

    @staticmethod
    def _doc_details(desired: Desired, **more: object) -> dict[str, Any]:
        return {"rollout": desired.rollout, "serial": desired.serial, "intent": desired.intent,
                "sha256": desired.package.sha256, "url": desired.package.url, **more}

    def _save(self) -> None:
        self.state.counters = self.book.to_json()
        self.book.changed = False
        save_state(self.folder, self.state)

    def close(self) -> None:
        with self._lock:
            self._save()


def _require_own_controller_keys(orchestrator: Orchestrator, controller_keys: Mapping[str, Ed25519PublicKey]) -> None:
    """UsageError when a controller key is also a package key here: whoever holds it could both sign a package
    and order the device to install it. A package key file that does not load is left for the import to name."""
    folder = orchestrator.trust.trusted_keys
    try:
        packages = load_trusted_keys(folder)
    except UsageError:
        return
    require_distinct_keys({f"a package key ({folder})": packages,
                           "a controller key (controller_keys)": controller_keys})


def _imported_since(store: ModelStore, since: Cursor, package: Path) -> int | None:
    """The version an import of ``package`` filed after ``since`` (a kill came before the agent saved it)."""
    records, _ = store.journal.read_since(since)
    started = {r.op for r in records if r.action is Action.IMPORT and r.result is Result.STARTED
               and r.details.get("package") == str(package)}
    for record in records:
        if record.op in started and record.result in (Result.SUCCEEDED, Result.REPAIRED) \
                and record.to_version is not None:
            return record.to_version
    return None


def _promoted_since(store: ModelStore, since: Cursor, version: int) -> bool:
    """Whether ``version`` was promoted after ``since`` (served, perhaps rolled back since: never again)."""
    records, _ = store.journal.read_since(since)
    return any(r.action is Action.PROMOTE and r.result in (Result.SUCCEEDED, Result.REPAIRED)
               and r.to_version == version for r in records)


