"""``orchestrate watch``: every managed model checked on its interval until SIGTERM.

With ``--inbox DIR`` it also files packages dropped into DIR (complete .tar.gz files that
stopped changing), moving each to ``DIR/done`` or ``DIR/rejected`` with the reason. While it
runs it takes operators' rollbacks on its command socket (``command_socket.py``).

Triton down or unreachable is reported (metric, log) and never causes a rollback; when it
answers again, each model is reconciled to the disk and its watcher starts over with a
grace period, since a restarted server cold-starts every version.

Each model's watcher says when it next needs a tick (its next probe within the probe budget, its
next scrape, and soon enough to see a change on disk: ``ModelWatcher.next_due``); the loop sleeps
until the earliest and ticks only the watchers whose time has come, and never ticks a watcher more
often than its ``interval_s`` (or ``metrics_interval_s`` when shorter). The watchers share one
scrape of Triton's /metrics (``shared_scrape.py``).

Nothing but SIGTERM ends it: an error in a model's check (Triton's answers, the disk, a bug) or
in the inbox scan is logged and counted in ``orchestrator_watch_errors_total`` and the next tick
tries again. Each model is watched by one daemon at a time (``store.lock.WatchLock``): a second
one says who holds it and takes over when that one stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from orchestrator.core.probe_budget import SLACK_S
from orchestrator.daemons.command_socket import CommandSocket
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.http_api import serve
from orchestrator.daemons.probe_schedule import STEADY_TICK_S
from orchestrator.daemons.shared_scrape import SharedScrape
from orchestrator.daemons.watcher import ModelWatcher
from orchestrator.delivery.fetch import DEFAULT_QUIET_S, QuietPackages, settle
from orchestrator.errors import Busy, OrchestratorError, WriteFailed
from orchestrator.settings import Settings
from orchestrator.store.backlog import WriteBacklog
from orchestrator.store.labels import read_labels
from orchestrator.store.lock import WatchLock
from orchestrator.store.policyfile import read_policies
from orchestrator.triton.control import TritonControl
from orchestrator.triton.protocol import TritonAPI, TritonState
from orchestrator.usecases.orchestrator import Orchestrator

log = logging.getLogger(__name__)

INBOX_INTERVAL_S = 5.0
RETENTION_RETRY_S = 60.0  # retention off, or a command held the model's lock: look again this much later
ERROR_LOG_EVERY_S = 60.0
MIN_GAP_S = 0.001  # a watcher due again at once (a bug, a clock gone back) waits interval_s instead of spinning


class Watch:
    """``triton``: a server every part talks to (a twin in tests); by default each model's watcher
    opens its own connection with short deadlines, and commands share another."""

    def __init__(self, settings: Settings, models: list[str] | None, metrics_url: str,
                 registry: CollectorRegistry | None = None, inbox: Path | None = None,
                 inbox_quiet_s: float = DEFAULT_QUIET_S, trace_dir: Path | None = None,
                 triton: TritonAPI | None = None, clock: Callable[[], float] = time.monotonic,
                 take_commands: bool = True) -> None:
        self.settings = settings  # as given: what the command socket's rollbacks run with
        self.take_commands = take_commands
        # The watcher must not queue behind a long operator command; it retries next tick.
        self.orchestrator = Orchestrator(replace(settings, lock_timeout_s=0.5, actor="watch"), triton=triton)
        self.backlog = WriteBacklog(clock)  # shared with the command socket's rollbacks
        self.orchestrator.backlog = self.backlog
        self.triton, self.clock = triton, clock
        self.registry = registry or CollectorRegistry()
        self.metrics = WatchMetrics(self.registry)
        self.metrics_url = metrics_url
        self.trace_dir = trace_dir
        self.scrape = SharedScrape(clock)
        self.next_run: dict[str, float] = {}  # when each model's watcher is due next (absent: now)
        names = models or self.orchestrator.repository.models()
        self.sharers = len(names)  # the models that share the device's steady probe budget
        self.watchers = {name: self._watcher(name) for name in names}
        self.locks = {name: WatchLock(self.orchestrator.repository.model(name).state) for name in names}
        self.waiting: set[str] = set()  # models another daemon watches, reported once
        self.logged: dict[tuple[str, str], tuple[str, float]] = {}  # (model, where) -> last error logged, when
        self.down_since: float | None = None
        self.inbox, self.inbox_quiet_s = inbox, inbox_quiet_s
        self.quiet = QuietPackages(clock)
        self.next_inbox_scan = 0.0
        self.next_prune: dict[str, float] = {}  # policy.yaml's retention: when each model is looked at next

    def _watcher(self, name: str) -> ModelWatcher:
        store = self.orchestrator.repository.model(name)
        return ModelWatcher(self.orchestrator, store, read_policies(store.state).watch, self.metrics, self.metrics_url,
                            clock=self.clock, trace_dir=self.trace_dir, triton=self.triton, scrape=self.scrape,
                            sharers=self.sharers)

    def tick(self) -> None:
        """One pass: the watchers whose time has come check their model, then Triton's liveness is judged."""
        if len(self.backlog):
            try:
                self.backlog.flush()
            except Exception as exc:  # not the disk's refusal: it stays first in line, said once a minute
                self._failed("", "backlog", exc)
        self.metrics.pending_writes.set(len(self.backlog))
        now, ticked = self.clock(), []
        for name, watcher in self.watchers.items():
            if self.next_run.get(name, now) > now + SLACK_S:
                continue
            # Never more often than the fixed loop ticked: a check that fails, a model another daemon holds.
            soonest = now + min(watcher.policy.interval_s, watcher.policy.metrics_interval_s)
            self.next_run[name] = soonest
            if not self._holds(name):
                continue
            ticked.append(watcher)
            try:
                watcher.tick()
                due = watcher.next_due()
                self.next_run[name] = due if due > now + MIN_GAP_S else soonest
            except Exception as exc:  # the daemon outlives any one check
                self._failed(name, "check", exc)
            self._retain(name)
        if not ticked:
            return  # nobody looked: nothing new about the server
        # A probe that got any answer (or none from a server that is not live) already told.
        seen = [w.seen_live for w in ticked if w.seen_live is not None]
        live = all(seen) if seen else self.orchestrator.triton.is_live()
        if not live and self.down_since is None:
            self.down_since = self.clock()
            log.warning("Triton at %s is not answering; watching, not rolling back", self.orchestrator.triton.url)
        elif live and self.down_since is not None:
            log.warning("Triton is back after %.1f s; reconciling", self.clock() - self.down_since)
            self.down_since = None
            self._recover()

    def _retain(self, name: str) -> None:
        """policy.yaml's ``retention``: when enabled, prune the model at most every ``every_s`` (``usecases/prune.py``
        with the watcher's short lock wait); the policy is read again within a minute while it is off."""
        now = self.clock()
        if now < self.next_prune.get(name, now):
            return
        self.next_prune[name] = now + RETENTION_RETRY_S  # unless the policy says otherwise
        try:
            # The watcher's own store: looking the model up again reads every config.pbtxt of the repository.
            policy = read_policies(self.watchers[name].store.state).retention
            if policy.enabled:
                self.next_prune[name] = now + policy.every_s
                self.orchestrator.prune(name, keep=policy.keep)
        except Busy:  # a command holds the model: soon, not a whole every_s later
            self.next_prune[name] = min(self.next_prune[name], now + RETENTION_RETRY_S)
        except Exception as exc:  # a full disk, a broken policy.yaml: counted, tried again when next due
            self._failed(name, "retention", exc)

    def _holds(self, name: str) -> bool:
        try:
            held = self.locks[name].acquire()
        except Exception as exc:  # a full disk, a planted link: this daemon does not watch it, and says so
            self._failed(name, "lock", exc)
            return False
        if held and name in self.waiting:
            self.waiting.discard(name)
            log.warning("%s: now watched by this daemon", name)
        elif not held and name not in self.waiting:
            self.waiting.add(name)
            log.warning("%s: watched by another daemon (%s); this one waits for it", name, self.locks[name].holder())
        return held

    def _failed(self, name: str, where: str, exc: Exception) -> None:
        kind = "orchestrator" if isinstance(exc, OrchestratorError) else "disk" if isinstance(exc, OSError) else "bug"
        self.metrics.errors.labels(name, where, kind).inc()
        # Counted every time; logged when it changes or once a minute: a full disk fails every tick.
        message, now = f"{type(exc).__name__}: {exc}", self.clock()
        last = self.logged.get((name, where))
        if last is not None and last[0] == message and now - last[1] < ERROR_LOG_EVERY_S:
            return
        self.logged[(name, where)] = (message, now)
        if kind == "bug":
            log.error("%s: %s failed: unexpected %s: %s", name, where, type(exc).__name__, exc, exc_info=True)
        else:
            log.error("%s: %s failed: %s", name, where, exc)

    def scan_inbox(self) -> list[str]:
        """File every complete package that landed in the inbox; move it to done/ or rejected/ (with why)."""
        notes: list[str] = []
        if self.inbox is None or self.clock() < self.next_inbox_scan:
            return notes
        self.next_inbox_scan = self.clock() + INBOX_INTERVAL_S
        for package in self.quiet.ready(self.inbox, self.inbox_quiet_s):
            try:
                result = self.orchestrator.import_package(package)
            except WriteFailed as exc:  # this device's disk, not the package: it stays for the next scan
                notes.append(f"inbox: could not file {package.name}: {exc}")
            except OrchestratorError as exc:
                settle(package, ok=False, reason=str(exc))
                notes.append(f"inbox: refused {package.name}: {exc}")
            except OSError as exc:  # disk full: leave it in the inbox for the next scan
                notes.append(f"inbox: could not file {package.name}: {exc}")
            except Exception as exc:  # a package we fail on must not come back on every start
                reason = f"unexpected {type(exc).__name__} while filing it: {exc} (a bug; please report it)"
                log.error("inbox: %s", reason, exc_info=True)
                self.metrics.errors.labels("", "inbox", "bug").inc()
                settle(package, ok=False, reason=reason)
                notes.append(f"inbox: refused {package.name}: {reason}")
            else:
                settle(package, ok=True)
                notes.append(f"inbox: filed {package.name} as {result.model} v{result.version}")
        for note in notes:
            log.warning("%s", note)
        return notes

    def _recover(self) -> None:
        for name in list(self.watchers):
            try:
                for note in self.orchestrator.reconcile(name):
                    log.warning("%s: %s", name, note)
            except OrchestratorError as exc:
                log.error("%s: reconcile after Triton came back failed: %s", name, exc)
            old = self.watchers[name]
            old.close()
            self.watchers[name] = self._watcher(name)  # fresh baseline, streaks and grace period
            self.next_run.pop(name, None)
            fresh = self.watchers[name]
            fresh.recent_rollbacks = old.recent_rollbacks  # the loop breaker remembers
            fresh.journal_cursor, fresh.follow_started = old.journal_cursor, old.follow_started  # nothing uncounted

    def labels_of(self, model: str) -> dict[str, int]:
        """For the labels API: the model's labels (UnknownModel, RepositoryCorrupt as they are)."""
        return read_labels(self.orchestrator.repository.model(model).state)

    def ready_of(self, model: str) -> set[int]:
        """For the labels API: the versions Triton reports READY, asked on a connection of the request's own."""
        triton = TritonControl(self.settings.triton_url, self.settings.admin_key, timeout_s=1.0)
        try:
            return {v for v, e in triton.states(model).items() if e.state is TritonState.READY}
        finally:
            triton.close()

    def interval(self) -> float:
        return min((w.policy.interval_s for w in self.watchers.values()), default=1.0)

    def next_wake(self) -> float:
        """The clock time of the next pass: the first watcher due, the inbox's next scan, within STEADY_TICK_S."""
        now = self.clock()
        wanted = [now + STEADY_TICK_S, *(self.next_run.get(name, now) for name in self.watchers)]
        if self.inbox is not None:
            wanted.append(self.next_inbox_scan)
        return min(wanted)

    def run(self, stop: threading.Event) -> None:
        log.warning("watching %s", ", ".join(self.watchers) or "no models")
        commands = CommandSocket(self.settings, self.backlog).start() if self.take_commands else None
        try:
            while not stop.is_set():
                self.tick()
                try:
                    self.scan_inbox()
                except Exception as exc:  # an unreadable inbox folder, a full disk: next scan
                    self._failed("", "inbox", exc)
                stop.wait(max(0.0, self.next_wake() - self.clock()))
        finally:
            if commands is not None:
                commands.stop()
        for watcher in self.watchers.values():
            watcher.close()
        for lock in self.locks.values():
            lock.release()
        log.warning("watch stopped")


def serve_metrics(registry: CollectorRegistry, port: int, address: str, daemon: Watch | None = None) -> None:
    """``/metrics``, and with ``daemon`` the read-only labels API beside it (``daemons/http_api.py``)."""
    if daemon is None:
        serve(registry, port, address)
    else:
        serve(registry, port, address, daemon.labels_of, daemon.ready_of)
