"""One model under watch: probe the served version, read Triton's metrics, judge, act.

Probes send one golden sample per interval to the model without naming a version, exactly
as clients do, so the answer comes from whatever clients get. The last verified version
stays resident (promote keeps it loaded), so its outputs on the same golden samples are
the baseline for divergence and score, queried once per switch by explicit version.

Drift needs what clients really got: the production sampler (Triton's tracing) supplies
the served version's outputs, cut into windows; each version records a baseline of its
own once it serves verified and healthy (``drift_baseline.json``, journaled when complete).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import requests

from orchestrator.core.drift import Baseline, DriftWindow, WindowAccumulator, row_features
from orchestrator.core.golden import GoldenSet
from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.core.model import VersionStatus
from orchestrator.core.policy import Divergence, Drift, Severity, WatchPolicy
from orchestrator.core.rules import Anomaly, Finding, Observation, Outcome, Streak, assess, step
from orchestrator.core.watch_decision import Response, WatchAction, decide
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.sampler import ProductionSampler
from orchestrator.errors import (
    Busy,
    OrchestratorError,
    PolicyViolation,
    RepositoryCorrupt,
    TritonError,
    TritonUnreachable,
)
from orchestrator.store.baselines import (
    read_drift_baselines,
    read_latency_baselines,
    write_drift_baselines,
    write_latency_baselines,
)
from orchestrator.store.golden import load_golden
from orchestrator.store.modelconfig import contract
from orchestrator.store.repository import ModelStore
from orchestrator.triton import metrics as triton_metrics
from orchestrator.triton.golden import run_golden
from orchestrator.triton.protocol import TritonAPI, TritonState
from orchestrator.usecases.context import Context
from orchestrator.usecases.rollback import rollback

log = logging.getLogger(__name__)

WATCH_ACTOR = "watch"


@dataclass
class PassTracker:
    """Predictions of the served version over one full pass of the golden set."""

    predictions: dict[int, int] = field(default_factory=dict)

    def add(self, indices: range, logits: np.ndarray) -> None:
        for index, row in zip(indices, logits.reshape(len(indices), -1), strict=True):
            self.predictions[index] = int(np.argmax(row))

    def accuracy_if_complete(self, labels: np.ndarray) -> float | None:
        if len(self.predictions) < len(labels):
            return None
        correct = sum(1 for index, label in enumerate(labels) if self.predictions.get(index) == int(label))
        self.predictions.clear()
        return correct / len(labels)


class ModelWatcher:
    """Injected: the context rollbacks run in, the Triton this watcher probes (its own connection,
    short deadlines), the clock, and where Triton's trace files appear (drift sampling)."""

    def __init__(self, ctx: Context, store: ModelStore, policy: WatchPolicy, metrics: WatchMetrics,
                 metrics_url: str, clock: Callable[[], float] = time.monotonic, trace_dir: Path | None = None,
                 triton: TritonAPI | None = None) -> None:
        # A dead backend can take long to unload; the watcher never waits on it for long.
        self.ctx = ctx.with_settings(unload_wait_s=1.0)
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.metrics_url = metrics_url
        self.clock = clock
        self.triton = triton if triton is not None else _own_client(ctx)
        snap = store.snapshot()
        config = snap.config
        self.outputs = snap.outputs
        self.golden: GoldenSet | None = load_golden(store.state / snap.policies.promotion.golden, contract(config))
        self.served_verified = False  # the served version's status, read at each switch
        self.cursor = 0
        self.streaks: dict[str, Streak] = {}
        self.served: int | None = None
        self.fallback: int | None = None
        self.switched_at = clock()
        self.baseline_outputs: dict[str, np.ndarray] | None = None
        self.baseline_accuracy: float | None = None
        self.pass_tracker = PassTracker()
        self.window: deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = deque(maxlen=self._window_size())
        self.last_scrape: triton_metrics.Snapshot | None = None
        self.last_scrape_at = 0.0
        self.latency_baselines = read_latency_baselines(store.state)
        self.gave_up_on: int | None = None  # served version with no verified fallback: alert once, no retries
        self.journal_offset = store.journal.size()
        self.seen_live: bool | None = None  # what this tick's probe showed of the server; None: no probe
        self.drift, self.drift_output, self.drift_row_size = self._drift_setup(config)
        self.batched = config.max_batch_size > 0  # traced outputs then carry the batch dimension
        self.sampler = ProductionSampler(self.triton, store, self.drift.samples_per_s, trace_dir, clock) \
            if self.drift is not None else None
        self.drift_key = self.drift.baseline_key(self.outputs) if self.drift is not None else ""
        self.drift_baselines = read_drift_baselines(store.state)
        self.accumulator: WindowAccumulator | None = None
        self.drift_reference: int | None = None
        self.last_sampled_at = -math.inf
        self.requests_per_s: float | None = None

    def _drift_setup(self, config) -> tuple[Drift | None, str, int]:  # type: ignore[no-untyped-def]
        rule = self.policy.rules.get("drift")
        if not isinstance(rule, Drift) or not rule.sampling:
            return None, "", 0
        output = rule.output_of(self.outputs)
        spec = next((t for t in contract(config).outputs if t.name == output), None)
        where = f"{self.store.state / 'policy.yaml'} watch: rule drift"
        if spec is None:
            raise RepositoryCorrupt(f"{where}: {output!r} is not an output of {self.store.name} "
                                    f"({', '.join(self.outputs)})")
        row_size = math.prod(spec.dims) if spec.dims and all(d > 0 for d in spec.dims) else 0
        if rule.statistic == "class_histogram" and row_size < 2:
            raise RepositoryCorrupt(f"{where}: class_histogram needs an output of fixed shape with 2 or more "
                                    f"classes; {spec.describe()} is not (use detection_count or mean)")
        return rule, output, row_size

    def _window_size(self) -> int:
        rule = self.policy.rules.get("divergence")
        return rule.window if isinstance(rule, Divergence) else 20

    # --- one check ----------------------------------------------------------------------
    def tick(self) -> list[Anomaly]:
        now = self.clock()
        self.seen_live = None
        served = self.store.served()
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
            self._act(anomaly)
        self.metrics.checks.labels(self.store.name).inc()
        self.metrics.last_check.labels(self.store.name).set(time.time())
        self._follow_journal()
        return anomalies

    def _reset(self, served: int | None, now: float) -> None:
        """A switch happened (ours, an operator's, or a restart): new baseline, fresh streaks, grace."""
        self.served = served
        self.switched_at = now
        self.streaks = {}
        self.pass_tracker = PassTracker()
        self.window = deque(maxlen=self._window_size())
        self.last_scrape = None
        self.gave_up_on = None
        snap = self.store.snapshot()
        resident = set(snap.resident)
        self.served_verified = served is not None and served in snap.versions \
            and snap.status(served) is VersionStatus.VERIFIED
        # Only a resident verified version can be queried for a baseline.
        fallbacks = snap.fallbacks(exclude=(set(snap.versions) - resident) |
                                   ({served} if served is not None else set()), limit=1)
        self.fallback = fallbacks[0] if fallbacks else None
        self.baseline_outputs, self.baseline_accuracy = None, None
        if self.golden is not None and self.fallback is not None:
            try:
                outputs = run_golden(self.triton, self.store.name, self.fallback, self.golden, self.outputs, 8)
                self.baseline_outputs = outputs
                if self.golden.labels is not None:
                    logits = outputs[self.outputs[0]]
                    self.baseline_accuracy = float((logits.argmax(1) == self.golden.labels).mean())
            except TritonError as exc:
                log.warning("%s: no baseline from v%s: %s", self.store.name, self.fallback, exc)
        self.metrics.set_residency(self.store.name, served, tuple(resident), list(snap.versions))
        if self.drift is not None:
            # Outputs of the previous version, sampled before the switch, belong to no window of this one.
            self.accumulator = WindowAccumulator(self.drift.statistic, self.drift.window, self.drift_row_size)
            refs = snap.fallbacks(exclude={served} if served is not None else set(), limit=1)
            self.drift_reference = refs[0] if refs else None

    def _observe(self, now: float) -> Observation:
        probe: dict[str, object] = {}
        if self.golden is not None and self.served is not None:
            probe = self._probe()
            self.seen_live = not probe.get("unreachable")
            if probe.get("unreachable"):
                self.metrics.triton_up.set(0)
                return Observation(time=now, live=False)
        self.metrics.triton_up.set(1)
        scrape: dict[str, object] = {}
        if now - self.last_scrape_at >= self.policy.metrics_interval_s or probe.get("probe_ok") is False:
            scrape = self._scrape(now)
        return Observation(time=now, live=True, **probe, **scrape, **self._drift_window(now))  # type: ignore[arg-type]

    def _probe(self) -> dict[str, object]:
        assert self.golden is not None
        start = self.cursor % self.golden.size
        indices = range(start, min(start + self.policy.probe_batch, self.golden.size))
        self.cursor = indices.stop % self.golden.size
        batch = {name: array[indices.start:indices.stop] for name, array in self.golden.inputs.items()}
        started = time.monotonic()
        try:
            result = self.triton.infer(self.store.name, batch, self.outputs)
        except TritonUnreachable as exc:
            if not self.triton.is_live():
                return {"unreachable": True}
            # The server answers but this model does not: a hung or crashed backend.
            return {"probe_ok": False, "probe_error": str(exc)}
        except TritonError as exc:
            return {"probe_ok": False, "probe_error": str(exc)}
        self.metrics.probe_latency.labels(self.store.name).observe(time.monotonic() - started)
        if result.version != self.served:
            return {"probe_ok": True}  # mid-switch: Triton and disk disagree for a moment
        observed: dict[str, object] = {"probe_ok": True, "outputs": result.outputs}
        if self.baseline_outputs is not None:
            baseline = {name: values[indices.start:indices.stop] for name, values in self.baseline_outputs.items()}
            for row in range(len(indices)):
                self.window.append(({k: v[row:row + 1] for k, v in result.outputs.items()},
                                    {k: v[row:row + 1] for k, v in baseline.items()}))
            observed["window"], observed["baseline"] = self._window()
        if self.golden.labels is not None:
            self.pass_tracker.add(indices, result.outputs[self.outputs[0]])
            accuracy = self.pass_tracker.accuracy_if_complete(self.golden.labels)
            if accuracy is not None:
                observed["golden_accuracy"] = accuracy
                observed["baseline_accuracy"] = self.baseline_accuracy
        return observed

    def _window(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Served and baseline outputs of the most recent ``divergence.window`` probed samples."""
        served = {name: np.concatenate([o[name] for o, _ in self.window]) for name in self.outputs}
        base = {name: np.concatenate([b[name] for _, b in self.window]) for name in self.outputs}
        for name in self.outputs:
            mean_abs = float(np.abs(served[name].astype(np.float64) - base[name]).mean())
            if np.isfinite(mean_abs):
                self.metrics.probe_divergence.labels(self.store.name, name).set(mean_abs)
        return served, base

    def _scrape(self, now: float) -> dict[str, object]:
        observed: dict[str, object] = {}
        try:
            states = self.triton.states(self.store.name)
            entry = states.get(self.served) if self.served is not None else None
            observed["served_ready"] = entry is not None and entry.state is TritonState.READY
        except TritonError:
            pass
        snapshot = triton_metrics.scrape(self.metrics_url, timeout_s=2.0)
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

    # --- drift ----------------------------------------------------------------------------
    def _drift_window(self, now: float) -> dict[str, object]:
        """The next closed window of the served version's production outputs, with its baseline."""
        if self.drift is None or self.sampler is None or self.accumulator is None or self.served is None:
            return {}
        if now - self.last_sampled_at >= self.policy.metrics_interval_s:
            self.last_sampled_at = now
            for sample in self.sampler.poll(self.requests_per_s):
                output = sample.outputs.get(self.drift_output)
                if sample.version != self.served or output is None:
                    continue  # the previous version, answering during a switch
                rows = max(1, output.shape[0]) if self.batched and output.ndim > 1 else 1
                try:
                    features = row_features(self.drift.statistic, output,
                                            self.drift_row_size or output.size // rows, self.drift.threshold)
                except ValueError as exc:  # not the configured shape: nothing to count
                    log.warning("%s: traced output skipped: %s", self.store.name, exc)
                    continue
                self.accumulator.add(features)
                self.metrics.production_samples.labels(self.store.name).inc(len(features))
        value = self.accumulator.pop()
        if value is None:
            pending = self.sampler.reason or f"{self.accumulator.pending} of {self.drift.window} production outputs"
            return {"drift_pending": pending}
        return {"drift": self._judged_against(value)}

    def _judged_against(self, value: np.ndarray) -> DriftWindow:
        """A version is judged against its own baseline once it has one, else the last verified version's."""
        assert self.drift is not None and self.served is not None
        statistic, needed = self.drift.statistic, self.drift.baseline_windows
        window = DriftWindow(statistic, value, self.drift.window, None)
        own = self._drift_baseline(self.served)
        if own is not None and own.windows >= needed:
            return replace(window, baseline=own, reference=self.served, own=True)
        ref = self._drift_baseline(self.drift_reference) if self.drift_reference is not None else None
        if ref is not None and ref.windows >= needed and len(ref.mean) == len(value):
            return replace(window, baseline=ref, reference=self.drift_reference)
        progress = f"recording v{self.served}'s drift baseline: {own.windows if own else 0} of {needed} windows"
        if self.drift_reference is not None:
            progress += f"; v{self.drift_reference} has no complete baseline"
        return replace(window, why=progress)

    def _drift_baseline(self, version: int | None) -> Baseline | None:
        baseline = self.drift_baselines.get(str(version))
        return baseline if baseline is not None and baseline.key == self.drift_key else None

    def _learn_drift(self, window: DriftWindow, findings: list[Finding]) -> None:
        """A healthy window of a verified version goes into its baseline until the baseline is complete."""
        assert self.drift is not None
        if self.served is None or window.own or self._breaching():
            return
        if any(f.rule == "drift" and f.outcome is Outcome.BREACH for f in findings):
            return
        if not self.served_verified:
            return
        baseline = (self._drift_baseline(self.served) or Baseline(self.drift_key)).add(window.value)
        self.drift_baselines[str(self.served)] = baseline
        write_drift_baselines(self.store.state, self.drift_baselines, self.store.versions())
        if baseline.windows == self.drift.baseline_windows:
            self.store.journal.append(Record(
                action=Action.BASELINE, result=Result.SUCCEEDED, op=new_op_id(), actor=WATCH_ACTOR,
                to_version=self.served,
                reason=f"drift baseline of v{self.served} recorded over {baseline.windows} windows",
                details={"rule": "drift", "key": baseline.key, "windows": baseline.windows,
                         "mean": [round(m, 6) for m in baseline.mean],
                         "sigma": [round(float(v), 6) for v in baseline.sigma()]}))
            log.warning("%s: v%s drift baseline recorded (%s)", self.store.name, self.served, baseline.key)

    def _breaching(self) -> bool:
        return any(streak.count and self.policy.rules[name].severity is Severity.ROLLBACK
                   for name, streak in self.streaks.items())

    # --- latency baselines ----------------------------------------------------------------
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
    def _act(self, anomaly: Anomaly) -> None:
        name = self.store.name
        self.metrics.anomalies.labels(name, anomaly.rule, anomaly.severity.value).inc()
        action = decide(anomaly, self.served, self.gave_up_on)
        if action.response is Response.ALERT:
            self._alert(anomaly, action.evidence)
            return
        self._roll_back(anomaly, action)

    def _roll_back(self, anomaly: Anomaly, action: WatchAction) -> None:
        name = self.store.name
        started = time.monotonic()
        try:
            result = rollback(self.ctx, name, reason=action.reason, quarantine=True, evidence=action.evidence)
        except Busy:
            # Another command holds the model (an operator's promote): judge again next tick.
            self.streaks[anomaly.rule] = Streak(self.streaks[anomaly.rule].count, anomaly.first_breach, False)
            return
        except PolicyViolation as exc:
            self.gave_up_on = self.served
            self._alert(anomaly, action.evidence | {"rollback_refused": str(exc)})
            return
        except OrchestratorError as exc:
            log.error("%s: automatic rollback failed: %s", name, exc)
            self._alert(anomaly, action.evidence | {"rollback_failed": str(exc)})
            return
        self.metrics.rollbacks.labels(name, anomaly.rule).inc()
        self.metrics.detection_latency.labels(name, anomaly.rule).observe(anomaly.detection_latency_s)
        self.metrics.switch_duration.labels(name, "rollback").observe(result.switch_ms / 1000.0)
        log.warning("%s: rolled back v%s -> v%s (%s) in %.0f ms", name, result.from_version, result.to_version,
                    action.reason, (time.monotonic() - started) * 1000)
        notify(self.policy.webhook, {"event": "rollback", "model": name, "from": result.from_version,
                                     "to": result.to_version, "evidence": action.evidence})

    def _alert(self, anomaly: Anomaly, evidence: dict[str, object]) -> None:
        self.store.journal.append(Record(action=Action.ANOMALY, result=Result.ALERT, op=new_op_id(),
                                         actor=WATCH_ACTOR, from_version=self.served,
                                         reason=f"{anomaly.rule}: {anomaly.finding.detail}",
                                         details={"evidence": evidence, "severity": anomaly.severity.value}))
        log.warning("%s: %s anomaly: %s", self.store.name, anomaly.rule, anomaly.finding.detail)
        notify(self.policy.webhook, {"event": "alert", "model": self.store.name, "evidence": evidence})

    def _follow_journal(self) -> None:
        """Count promote outcomes written by other processes (the CLI) since the last look."""
        records, self.journal_offset = self.store.journal.read_since(self.journal_offset)
        for record in records:
            if record.action is Action.PROMOTE and record.is_final:
                self.metrics.promotions.labels(self.store.name, record.result.value).inc()
            if record.action.switches and record.is_final and record.actor != WATCH_ACTOR \
                    and record.details.get("switch_ms") is not None:
                self.metrics.switch_duration.labels(self.store.name, record.action.value).observe(
                    float(record.details["switch_ms"]) / 1000.0)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.triton.close()


def _own_client(ctx: Context) -> TritonAPI:
    from orchestrator.triton.client import Triton  # noqa: PLC0415 - tests inject a twin instead

    return Triton(ctx.settings.triton_url, ctx.settings.admin_key, timeout_s=min(2.0, ctx.settings.timeout_s))


def notify(url: str | None, payload: dict[str, object]) -> None:
    """Fire-and-forget webhook: a slow receiver must never delay a rollback."""
    if not url:
        return

    def send() -> None:
        try:
            requests.post(url, json=payload, timeout=5)
        except requests.RequestException as exc:
            log.warning("webhook %s failed: %s", url, exc)

    threading.Thread(target=send, daemon=True).start()

