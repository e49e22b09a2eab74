"""One model under watch: probe the served version, read Triton's metrics, judge, act.

Each tick gathers an ``Observation`` (golden probes in ``probes.py``, Triton's ``/metrics``,
production-output windows in ``drift_watch.py``), lets the pure rules judge it
(``core/rules.py``), decides what an anomaly calls for (``core/watch_decision.py``) and acts:
an alert, or a rollback through the same use case as ``orchestrate rollback``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestrator.core.drift import DriftWindow
from orchestrator.core.journal import WATCH_ACTOR, Action, Record, Result, new_op_id
from orchestrator.core.model import VersionStatus
from orchestrator.core.policy import Divergence, Severity, WatchPolicy
from orchestrator.core.probe_budget import SLACK_S, last_switch
from orchestrator.core.rules import Anomaly, Finding, Observation, Outcome, Streak, assess, step
from orchestrator.core.watch_decision import Response, WatchAction, decide_check
from orchestrator.daemons.drift_watch import DriftWatch, drift_rule
from orchestrator.daemons.exporter import BLOCKED_REASONS, WatchMetrics
from orchestrator.daemons.probe_schedule import ProbeSchedule, next_scrape
from orchestrator.daemons.probes import GoldenProbe
from orchestrator.daemons.watched_files import WatchedFiles
from orchestrator.daemons.webhook import notify
from orchestrator.errors import (
    Busy,
    OrchestratorError,
    PolicyViolation,
    RepositoryCorrupt,
    StaleJudgement,
    TritonError,
    UnverifiedResident,
)
from orchestrator.store.baselines import read_latency_baselines, write_latency_baselines
from orchestrator.store.golden import load_golden
from orchestrator.store.lock import held_by_another
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton import metrics as triton_metrics
from orchestrator.triton.protocol import TritonAPI, TritonState
from orchestrator.usecases.context import Context
from orchestrator.usecases.repair import repair
from orchestrator.usecases.residency import residency
from orchestrator.usecases.rollback import rollback

log = logging.getLogger(__name__)



class ModelWatcher:
    """Injected: the context rollbacks run in, the Triton this watcher probes (its own connection,
    short deadlines), the clock, where Triton's trace files appear (drift sampling), the models a
    probe passes through (``probe_path``, whose costs the probe budget adds up; default the model
    alone) and the /metrics scraper (the daemon shares one among its watchers)."""

    def __init__(self, ctx: Context, store: ModelStore, policy: WatchPolicy, metrics: WatchMetrics,
                 metrics_url: str, clock: Callable[[], float] = time.monotonic, trace_dir: Path | None = None,
                 triton: TritonAPI | None = None, probe_path: tuple[str, ...] | None = None,
                 scrape: Callable[[str, float], triton_metrics.Snapshot | None] | None = None,
                 sharers: int = 1) -> None:
        self.ctx = ctx
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.metrics_url = metrics_url
        self.clock = clock
        self.triton = triton if triton is not None else _own_client(ctx)
        self.files = WatchedFiles(store)  # config, labels, pause, journal: a stat per tick when unchanged
        self.scrape = scrape or (lambda url, timeout_s: triton_metrics.scrape(url, timeout_s=timeout_s))
        snap = store.snapshot()
        metrics.initialise(store.name, snap.journal, {name: rule.severity for name, rule in policy.rules.items()})
        self.probe = _golden_probe(store, snap, policy, metrics)
        if probe_path is None and self.probe is not None and self.probe.route is not None:
            probe_path = self.probe.route.models  # through an ensemble a probe costs every step it runs
        self.schedule = ProbeSchedule(store.name, policy, metrics, probe_path, sharers=sharers)
        drift = drift_rule(policy.rules, store, snap)  # on the route clients take, as the probes are
        self.drift = DriftWatch(store, drift, self.triton, trace_dir, clock,
                                metrics.production_samples.labels(store.name).inc, WATCH_ACTOR) \
            if drift is not None else None
        self.served: int | None = None
        self.served_verified = False  # the served version's status, read at each switch
        self.fallback: int | None = None
        self.switched_at = clock()
        self.streaks: dict[str, Streak] = {}
        self.last_scrape: triton_metrics.Snapshot | None = None
        self.last_scrape_at = 0.0
        self.next_scrape_at = 0.0  # on a grid shared by the daemon's watchers: one scrape serves them all
        self.requests_per_s: float | None = None
        self.latency_baselines = read_latency_baselines(store.state)
        self.gave_up_on: int | None = None  # served version with no verified fallback: alert once, no retries
        # (clock time, from, to) of this model's automatic rollbacks, for the loop breaker; carried over
        # when the daemon makes a fresh watcher after a Triton restart.
        self.recent_rollbacks: list[tuple[float, int | None, int]] = []
        self.journal_cursor = store.journal.cursor()
        self.follow_started: dict[str, Record] = {}  # ``started`` records the journal follower saw, by op
        self.paused_alerted: int | None = None  # served version whose held-back rollback was alerted
        self.was_paused = False
        self.seen_live: bool | None = None  # what this tick's probe showed of the server; None: no probe
        self.guarded: tuple[int, ...] | None = None  # the config's resident set the residency guard last passed
        self.guard_failed = ""  # the guard's last failure, said once

    # --- one check ----------------------------------------------------------------------
    def tick(self) -> list[Anomaly]:
        now = self.clock()
        self.seen_live = None
        resident = self._guard_residency()
        served = max(resident) if resident else None
        if served != self.served:
            self._reset(served, now)
        obs = self._observe(now)
        if not obs.live:
            return []
        in_grace = now - self.switched_at < self.policy.grace_s
        findings = [assess(name, rule, obs) for name, rule in self.policy.rules.items()]
        for finding in findings:
            for key, value in finding.values.items():
                if np.isfinite(value):
                    self.metrics.rule_value.labels(self.store.name, finding.rule, key).set(value)
        self.streaks, anomalies = step(self.streaks, findings, self.policy, now, in_grace)
        if obs.drift is not None:
            self._learn_drift(obs.drift, findings)
        for anomaly in anomalies:
            self.metrics.anomalies.labels(self.store.name, anomaly.rule, anomaly.severity.value).inc()
        paused = self._pause()
        self._export_labels()
        for action in decide_check(anomalies, self.served, self.gave_up_on):
            if action.response is Response.ALERT:
                self._alert(action.anomaly, action.evidence)
            elif paused is not None:
                self._held_by_pause(action, paused)
            else:
                self._roll_back(action)
        self.metrics.checks.labels(self.store.name).inc()
        self.metrics.last_check.labels(self.store.name).set(time.time())
        self._follow_journal()
        return anomalies

    def _guard_residency(self) -> tuple[int, ...]:
        """The config's resident versions, after the guard (``usecases/residency.py``) when they changed: a hand
        edit, perhaps already loaded by a Triton restart, is rewritten and the verified set loaded before this
        tick judges what serves. The lock is taken only when there is something to drop."""
        resident = self.files.resident()
        if resident == self.guarded:
            return resident
        if not residency(self.store.snapshot()).dropped:
            self.guarded = resident
            return resident
        try:
            with self.ctx.locked(self.store):
                resident = repair(self.ctx, self.store).snapshot.resident
        except Busy:
            return resident  # the command holding the model repairs first; looked at again next tick
        except UnverifiedResident as exc:
            log.error("%s: %s", self.store.name, exc)  # once: looked at again when the config changes
        except (OrchestratorError, OSError) as exc:
            # A full disk, Triton refusing the load: judging goes on (a rollback must not wait); retried next tick.
            if str(exc) != self.guard_failed:
                log.error("%s: could not rewrite config.pbtxt: %s", self.store.name, exc)
            self.guard_failed = str(exc)
            return self.store.resident()
        self.guarded, self.guard_failed = resident, ""
        return resident

    def _reset(self, served: int | None, now: float) -> None:
        """A switch happened (ours, an operator's, or a restart): new baseline, fresh streaks, grace."""
        self.served = served
        self.switched_at = now
        self.streaks = {}
        self.last_scrape = None
        self.gave_up_on = None
        for reason in BLOCKED_REASONS:
            self.metrics.rollback_blocked.labels(self.store.name, reason).set(0)
        snap = self.store.snapshot()
        resident = set(snap.resident)
        self.served_verified = served is not None and served in snap.versions \
            and snap.status(served) is VersionStatus.VERIFIED
        # Only a resident verified version can be queried for a baseline.
        fallbacks = snap.fallbacks(exclude=(set(snap.versions) - resident) |
                                   ({served} if served is not None else set()), limit=1)
        self.fallback = fallbacks[0] if fallbacks else None
        if self.probe is not None:
            self.probe.reset(self.triton, self.fallback)
        self.schedule.reset(now, last_switch(snap.journal))
        self.metrics.set_residency(self.store.name, served, tuple(resident), list(snap.versions))
        if self.drift is not None:
            refs = snap.fallbacks(exclude={served} if served is not None else set(), limit=1)
            self.drift.reset(refs[0] if refs else None)

    def _observe(self, now: float) -> Observation:
        probe: dict[str, object] = {}
        if self.probe is not None and self.served is not None and self.schedule.due(now):
            started, cpu = self.clock(), time.thread_time()
            probe = self.probe.probe(self.triton, self.served)
            self.schedule.probed(now, self.clock() - started, ok=probe.get("probe_ok") is True,
                                 cpu_s=time.thread_time() - cpu)
            self.seen_live = not probe.get("unreachable")
            if probe.get("unreachable"):
                self.metrics.triton_up.set(0)
                return Observation(time=now, live=False)
        self.metrics.triton_up.set(1)
        self.schedule.measure(self.triton, now)  # what a probe costs, from Triton's statistics
        scrape: dict[str, object] = {}
        if now >= self.next_scrape_at - SLACK_S or probe.get("probe_ok") is False:
            self.next_scrape_at = next_scrape(now, self.policy.metrics_interval_s)  # a failed one too: not every tick
            scrape = self._scrape(now)
        drift: dict[str, object] = {}
        if self.drift is not None and self.served is not None:
            drift = self.drift.window(now, self.served, self.policy.metrics_interval_s, self.requests_per_s)
        return Observation(time=now, live=True, **probe, **scrape, **drift)  # type: ignore[arg-type]

    def _scrape(self, now: float) -> dict[str, object]:
        observed: dict[str, object] = {}
        try:
            observed["served_ready"] = ready = self._served_ready()
            if not ready and self.served is not None:
                # A command writes the config before Triton loads it: not READY is a breach only once no command
                # holds the model, and then as Triton answers after the lock came free.
                observed["switching"] = held_by_another(self.store.state)
                if not observed["switching"]:
                    observed["served_ready"] = self._served_ready()
        except TritonError:
            pass
        snapshot = self.scrape(self.metrics_url, 2.0)
        if snapshot is None or self.served is None:
            return observed
        observed["cpu_utilization"] = snapshot.gpu_utilization if snapshot.gpu_utilization is not None \
            else snapshot.cpu_utilization
        observed["memory_bytes"] = snapshot.gpu_memory_bytes if snapshot.gpu_memory_bytes is not None \
            else snapshot.memory_bytes
        if self.last_scrape is not None:
            diff = triton_metrics.delta(snapshot, self.last_scrape, self.store.name, self.served)
            if diff is not None:
                observed["requests"], observed["failures"] = diff.success, diff.failure
                if now > self.last_scrape_at:
                    self.requests_per_s = (diff.success + diff.failure) / (now - self.last_scrape_at)
                if diff.success > 0:
                    observed["avg_latency_us"] = diff.duration_us / diff.success
                    self._learn_latency(diff, now)
                base = self.latency_baselines.get(str(self.fallback)) if self.fallback is not None else None
                observed["baseline_latency_us"] = base
        self.last_scrape, self.last_scrape_at = snapshot, now
        return observed

    def _served_ready(self) -> bool:
        entry = self.triton.states(self.store.name).get(self.served) if self.served is not None else None
        return entry is not None and entry.state is TritonState.READY

    def next_due(self) -> float:
        """When this watcher next needs a tick (the daemon sleeps until the earliest): its next probe, scrape
        or drift poll, and soon enough to see a change on disk (``probe_schedule.ProbeSchedule.next_due``)."""
        wanted = [self.next_scrape_at]
        if self.drift is not None and self.served is not None:
            wanted.append(self.drift.last_sampled_at + self.policy.metrics_interval_s)
        probing = self.probe is not None and self.served is not None
        return self.schedule.next_due(self.clock(), probing, *wanted)

    # --- learning --------------------------------------------------------------------------
    def _learn_drift(self, window: DriftWindow, findings: list[Finding]) -> None:
        """Only a verified version's healthy windows go into its drift baseline."""
        if self.drift is None or self.served is None or self._breaching() or not self.served_verified:
            return
        if any(f.rule == "drift" and f.outcome is Outcome.BREACH for f in findings):
            return
        self.drift.learn(window, self.served)

    def _breaching(self) -> bool:
        return any(streak.count and self.policy.rules[name].severity is Severity.ROLLBACK
                   for name, streak in self.streaks.items())

    def _learn_latency(self, diff: triton_metrics.VersionCounters, now: float) -> None:
        """Record the served version's latency while it is verified, healthy and past its grace period."""
        if self.served is None or now - self.switched_at < self.policy.grace_s or diff.success < 20:
            return
        if self._breaching() or not self.served_verified:
            return
        average = diff.duration_us / diff.success
        key = str(self.served)
        previous = self.latency_baselines.get(key)
        self.latency_baselines[key] = average if previous is None else 0.8 * previous + 0.2 * average
        write_latency_baselines(self.store.state, self.latency_baselines)

    # --- acting ---------------------------------------------------------------------------
    def _export_labels(self) -> None:
        try:
            self.metrics.set_labels(self.store.name, self.files.labels())
        except RepositoryCorrupt as exc:  # the exposition keeps the last labels it could read
            log.warning("%s: %s", self.store.name, exc)

    def _pause(self) -> dict[str, str] | None:
        """The operator's pause of automatic rollback (``orchestrate pause``), read every tick."""
        pause = self.files.pause()
        self.metrics.paused.labels(self.store.name).set(1 if pause is not None else 0)
        if pause is None and self.was_paused:
            # Resumed: judge afresh, so that a breach the pause held back rolls back once its streak is seen again.
            self.streaks = {}
            self.metrics.rollback_blocked.labels(self.store.name, "paused").set(0)
            self.paused_alerted = None
        self.was_paused = pause is not None
        return pause

    def _held_by_pause(self, action: WatchAction, pause: dict[str, str]) -> None:
        """A rollback the pause holds back: alerted once per served version, the bad version keeps serving."""
        self.metrics.rollback_blocked.labels(self.store.name, "paused").set(1)
        if self.paused_alerted == self.served:
            return
        self.paused_alerted = self.served
        log.error("%s: would roll back v%s (%s) but automatic rollback is paused by %s", self.store.name,
                  self.served, action.reason, pause["by"])
        self._alert(action.anomaly, action.evidence | {"paused": pause})

    def _loop_breaker(self, action: WatchAction) -> str | None:
        """Why the watcher must stop acting on this model, or None."""
        now, window = self.clock(), self.policy.rollback_window_s
        self.recent_rollbacks = [r for r in self.recent_rollbacks if now - r[0] < window]
        back_to = [at for at, _, to in self.recent_rollbacks if to == action.judged]
        if back_to:
            return (f"v{action.judged}, rolled back to {now - back_to[-1]:.0f} s ago, breaches too: the fault is "
                    f"likely not the version's")
        if len(self.recent_rollbacks) >= self.policy.max_rollbacks:
            return f"{len(self.recent_rollbacks)} automatic rollbacks within {window:g} s"
        return None

    def _roll_back(self, action: WatchAction) -> None:
        name, anomaly = self.store.name, action.anomaly
        started = time.monotonic()
        tripped = self._loop_breaker(action)
        if tripped is not None:
            self.gave_up_on = self.served  # alerts from now on, no more switching until a switch happens
            self.metrics.rollback_blocked.labels(name, "loop_breaker").set(1)
            log.error("%s: loop breaker: %s; no more automatic rollbacks, v%s keeps serving", name, tripped,
                      self.served)
            self._alert(anomaly, action.evidence | {"loop_breaker": tripped})
            return
        try:
            result = rollback(self.ctx, name, reason=action.reason, quarantine=True, evidence=action.evidence,
                              judged=action.judged)
        except StaleJudgement as exc:
            log.warning("%s: %s", name, exc)  # the next tick sees the switch and starts over
            return
        except Busy:
            # Another command holds the model (an operator's promote): judge again next tick.
            for breached in (anomaly, *action.also):
                self.streaks[breached.rule] = Streak(self.streaks[breached.rule].count, breached.first_breach, False)
            return
        except PolicyViolation as exc:  # no verified version to go to
            self.gave_up_on = self.served
            self.metrics.rollback_blocked.labels(name, "no_fallback").set(1)
            self._alert(anomaly, action.evidence | {"rollback_refused": str(exc)})
            return
        except OrchestratorError as exc:
            log.error("%s: automatic rollback failed: %s", name, exc)
            self._alert(anomaly, action.evidence | {"rollback_failed": str(exc)})
            return
        self.recent_rollbacks.append((self.clock(), result.from_version, result.to_version))
        self.metrics.watch_rolled_back(name, anomaly.rule, quarantined=True)
        self.metrics.detection_latency.labels(name, anomaly.rule).observe(anomaly.detection_latency_s)
        self.metrics.switch_duration.labels(name, "rollback").observe(result.switch_ms / 1000.0)
        log.warning("%s: rolled back v%s -> v%s (%s) in %.0f ms", name, result.from_version, result.to_version,
                    action.reason, (time.monotonic() - started) * 1000)
        notify(self.policy.webhook, {"event": "rollback", "model": name, "from": result.from_version,
                                     "to": result.to_version, "evidence": action.evidence})

    def _alert(self, anomaly: Anomaly, evidence: dict[str, object]) -> None:
        record = Record(action=Action.ANOMALY, result=Result.ALERT, op=new_op_id(), actor=WATCH_ACTOR,
                        from_version=self.served, reason=f"{anomaly.rule}: {anomaly.finding.detail}",
                        details={"evidence": evidence, "severity": anomaly.severity.value})
        # A full state disk must not cost the alert: the record waits in the daemon's backlog.
        self.ctx.write_or_keep(f"{self.store.name}'s journal record (anomaly alert)",
                               lambda: self.store.journal.append(record))
        log.warning("%s: %s anomaly: %s", self.store.name, anomaly.rule, anomaly.finding.detail)
        notify(self.policy.webhook, {"event": "alert", "model": self.store.name, "evidence": evidence})

    def _follow_journal(self) -> None:
        """Count what other processes (the CLI, the command socket) journaled since the last look: promote
        outcomes and rollbacks. The watcher's own rollbacks were counted as they happened."""
        if not self.files.journal_changed():
            return
        records, self.journal_cursor = self.store.journal.read_since(self.journal_cursor)
        for record in records:
            if record.result is Result.STARTED:
                self.follow_started[record.op] = record
            elif record.is_final:
                started = self.follow_started.pop(record.op, None)
                own = record.action is Action.ROLLBACK and record.result is Result.SUCCEEDED \
                    and record.actor == WATCH_ACTOR
                if not own:
                    self.metrics.counted(self.store.name, record, started)
            if record.action.switches and record.is_final and record.actor != WATCH_ACTOR \
                    and record.details.get("switch_ms") is not None:
                self.metrics.switch_duration.labels(self.store.name, record.action.value).observe(
                    float(record.details["switch_ms"]) / 1000.0)

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        self.triton.close()


def _golden_probe(store: ModelStore, snap: ModelSnapshot, policy: WatchPolicy, metrics: WatchMetrics
                  ) -> GoldenProbe | None:
    """Probes on the route clients take (the model, or the ensemble whose step follows it); None without a golden
    set, or when the route is ambiguous (said once: the metrics-based rules still run)."""
    try:
        route = snap.route
        golden = load_golden(store.state / snap.policies.promotion.golden, snap.client_contract)
    except PolicyViolation as exc:
        log.error("%s: no golden probes: %s", store.name, exc)
        return None
    if golden is None:
        return None
    divergence = policy.rules.get("divergence")
    return GoldenProbe(
        store.name, golden, snap.client_outputs, policy.probe_batch,
        divergence.window if isinstance(divergence, Divergence) else 20,
        on_latency=metrics.probe_latency.labels(store.name).observe,
        on_divergence=lambda output, value: metrics.probe_divergence.labels(store.name, output).set(value),
        route=route, map_metric=snap.policies.promotion.map_metric,
    )


def _own_client(ctx: Context) -> TritonAPI:
    from orchestrator.triton.client import Triton  # noqa: PLC0415 - tests inject a twin instead

    return Triton(ctx.settings.triton_url, ctx.settings.admin_key, timeout_s=min(2.0, ctx.settings.timeout_s))
