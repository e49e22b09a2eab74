"""Watch rules and their verdicts: pure functions of a rule and an observation.

A rule breaches, holds, or is inconclusive (no data: never a pass, never a breach). A
breach becomes an anomaly only after it held for ``for_checks`` consecutive checks
(debounce) and, for a rule with a duration (``Rule.sustain_s``: drift on detections), for that
long since its first breach; rules that judge speed or load wait out a grace period after every
switch (cold start is not an anomaly). An anomaly is a value; ``core/watch_decision.py`` decides
what to do about it. The rules and their defaults are in ``core/policy.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from orchestrator.core.checks import sanity
from orchestrator.core.detection import Boxes, agreement
from orchestrator.core.detection_drift import judge
from orchestrator.core.drift import DriftWindow, worst_deviation
from orchestrator.core.policy import (
    DETECTIONS,
    Divergence,
    Drift,
    ErrorRate,
    GoldenScore,
    Health,
    Latency,
    OutputSanity,
    ProbeErrors,
    Resources,
    Rule,
    Severity,
    WatchPolicy,
)
from orchestrator.core.verdict import Outcome

# --- observations and verdicts ----------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """What one check saw; None means 'not measured this time'."""

    time: float
    live: bool
    served_ready: bool | None = None
    switching: bool = False  # a command holds the model: what the disk says serves may not be loaded yet
    probe_ok: bool | None = None
    probe_error: str = ""
    outputs: dict[str, np.ndarray] | None = None  # served version, this probe
    window: dict[str, np.ndarray] | None = None  # served version, the last probes' samples
    baseline: dict[str, np.ndarray] | None = None  # last verified version, the same samples as window
    golden_accuracy: float | None = None  # completed pass of the golden set through the served version
    baseline_accuracy: float | None = None
    zeros_ok: bool = False  # a detector's padded outputs: all zeros is a frame without objects
    detections: tuple[Boxes, ...] | None = None  # a detector's: served version, the last probed frames
    baseline_detections: tuple[Boxes, ...] | None = None  # last verified version, the same frames
    golden_map: float | None = None  # a detector's completed pass (the policy's map_metric)
    baseline_map: float | None = None
    requests: float | None = None  # Triton metrics delta for the served version
    failures: float | None = None
    avg_latency_us: float | None = None
    baseline_latency_us: float | None = None
    cpu_utilization: float | None = None
    memory_bytes: float | None = None
    drift: DriftWindow | None = None  # a window of production outputs that closed since the last check
    drift_pending: str = ""  # why no window closed: what the sampler is waiting for


@dataclass(frozen=True)
class Finding:
    rule: str
    outcome: Outcome
    detail: str = ""
    values: dict[str, float] = field(default_factory=dict)
    alert_only: bool = False  # a breach no rollback can fix: raised as an alert whatever the rule's severity


def _inconclusive(rule: str, why: str) -> Finding:
    return Finding(rule, Outcome.INCONCLUSIVE, why)


def assess(name: str, rule: Rule, obs: Observation) -> Finding:
    judge = _JUDGES[type(rule)]
    return judge(name, rule, obs)  # type: ignore[operator]


def _output_sanity(name: str, rule: OutputSanity, obs: Observation) -> Finding:
    if obs.outputs is None:
        return _inconclusive(name, "no probe output")
    verdict = sanity(obs.outputs, rule.bound, zeros_ok=obs.zeros_ok)
    return Finding(name, Outcome.OK if verdict.passed else Outcome.BREACH, verdict.reason)


def _box_divergence(name: str, rule: Divergence, obs: Observation) -> Finding:
    """A detector against the last verified version on the same frames: IoU-matched boxes of the same class."""
    served, base = obs.detections, obs.baseline_detections
    if served is None or base is None:
        return _inconclusive(name, "no baseline detections from a verified version")
    if len(served) < rule.window:
        return _inconclusive(name, f"{len(served)} of {rule.window} frames so far")
    if any(not (np.isfinite(f.boxes).all() and (f.scores is None or np.isfinite(f.scores).all())) for f in served):
        return Finding(name, Outcome.BREACH, "detections not finite", {"box_agreement": 0.0})
    found = agreement(served, base)
    values = {"box_agreement": found.matched_share, "count_diff": found.count_diff}
    if found.matched_share < rule.min_box_agreement or found.count_diff > rule.max_count_diff:
        return Finding(name, Outcome.BREACH, f"{found.matched_share:.0%} of boxes match the last verified version's "
                       f"at IoU 0.5 with the same class (min {rule.min_box_agreement:.0%}); {found.count_diff:.2f} "
                       f"boxes per frame apart (max {rule.max_count_diff:g}) over {found.frames} frames "
                       f"({found.boxes_a} against {found.boxes_b} boxes)", values)
    return Finding(name, Outcome.OK, "", values)


def _divergence(name: str, rule: Divergence, obs: Observation) -> Finding:
    if obs.detections is not None or obs.zeros_ok:
        return _box_divergence(name, rule, obs)
    if obs.window is None or obs.baseline is None:
        return _inconclusive(name, "no baseline outputs from a verified version")
    worst: Finding | None = None
    for tensor, values in obs.window.items():
        if len(values) < rule.window:
            return _inconclusive(name, f"{len(values)} of {rule.window} samples so far")
        base = obs.baseline.get(tensor)
        if base is None or base.shape != values.shape:
            continue
        served, reference = values.astype(np.float64), base.astype(np.float64)
        if not (np.isfinite(served).all() and np.isfinite(reference).all()):
            return Finding(name, Outcome.BREACH, f"{tensor} not finite", {"mean_abs_diff": math.inf})
        mean_abs = float(np.abs(served - reference).mean())
        agreement = float((served.reshape(len(served), -1).argmax(1) ==
                           reference.reshape(len(reference), -1).argmax(1)).mean())
        values_ = {"mean_abs_diff": mean_abs, "top1_agreement": agreement}
        if mean_abs > rule.max_mean_abs or agreement < rule.min_top1_agreement:
            return Finding(name, Outcome.BREACH, f"{tensor}: mean |diff| {mean_abs:.3g} (max {rule.max_mean_abs:g}), "
                           f"top-1 agreement {agreement:.2f} (min {rule.min_top1_agreement:g})", values_)
        worst = Finding(name, Outcome.OK, "", values_)
    return worst or _inconclusive(name, "no comparable output tensor")


def _golden_map(name: str, rule: GoldenScore, obs: Observation) -> Finding:
    if obs.golden_map is None or obs.baseline_map is None:
        return _inconclusive(name, "golden pass not complete")
    drop = obs.baseline_map - obs.golden_map
    values = {"map": obs.golden_map, "baseline_map": obs.baseline_map}
    if drop > rule.max_map_drop:
        return Finding(name, Outcome.BREACH, f"golden mAP {obs.golden_map:.3f} dropped {drop * 100:.1f} points below "
                       f"the last verified version's {obs.baseline_map:.3f} (max drop {rule.max_map_drop * 100:g})",
                       values)
    return Finding(name, Outcome.OK, "", values)


def _golden_score(name: str, rule: GoldenScore, obs: Observation) -> Finding:
    if obs.zeros_ok or obs.golden_map is not None:
        return _golden_map(name, rule, obs)
    if obs.golden_accuracy is None or obs.baseline_accuracy is None:
        return _inconclusive(name, "golden pass not complete")
    drop = obs.baseline_accuracy - obs.golden_accuracy
    values = {"accuracy": obs.golden_accuracy, "baseline_accuracy": obs.baseline_accuracy}
    if drop > rule.max_drop:
        return Finding(name, Outcome.BREACH, f"golden accuracy {obs.golden_accuracy:.3f} dropped {drop:.3f} below "
                       f"the last verified version's {obs.baseline_accuracy:.3f} (max drop {rule.max_drop:g})", values)
    return Finding(name, Outcome.OK, "", values)


def _probe_errors(name: str, rule: ProbeErrors, obs: Observation) -> Finding:
    if obs.probe_ok is None:
        return _inconclusive(name, "no probe")
    return Finding(name, Outcome.OK if obs.probe_ok else Outcome.BREACH, obs.probe_error)


def _error_rate(name: str, rule: ErrorRate, obs: Observation) -> Finding:
    if obs.requests is None or obs.failures is None or obs.requests + obs.failures < rule.min_requests:
        return _inconclusive(name, "too few requests in the window")
    rate = obs.failures / (obs.requests + obs.failures)
    values = {"failure_rate": rate, "requests": obs.requests + obs.failures}
    if rate > rule.max_rate:
        return Finding(name, Outcome.BREACH, f"failure rate {rate:.1%} over {obs.requests + obs.failures:.0f} "
                       f"requests (max {rule.max_rate:.1%})", values)
    return Finding(name, Outcome.OK, "", values)


def _latency(name: str, rule: Latency, obs: Observation) -> Finding:
    if obs.avg_latency_us is None or obs.requests is None or obs.requests < rule.min_requests:
        return _inconclusive(name, "too few requests in the window")
    if not obs.baseline_latency_us:
        return _inconclusive(name, "no latency baseline for the last verified version")
    ratio = obs.avg_latency_us / obs.baseline_latency_us
    values = {"avg_latency_us": obs.avg_latency_us, "baseline_latency_us": obs.baseline_latency_us, "ratio": ratio}
    if ratio > rule.max_ratio:
        return Finding(name, Outcome.BREACH, f"average latency {obs.avg_latency_us:.0f} us is {ratio:.1f}x the "
                       f"baseline {obs.baseline_latency_us:.0f} us (max {rule.max_ratio:g}x)", values)
    return Finding(name, Outcome.OK, "", values)


def _health(name: str, rule: Health, obs: Observation) -> Finding:
    if not obs.live:
        # Triton down is an outage of the server, not of the version: no rollback can help.
        return _inconclusive(name, "Triton is not live")
    if obs.served_ready is None:
        return _inconclusive(name, "served version state unknown")
    if not obs.served_ready and obs.switching:
        # The config names the new version before Triton has loaded it (2.51 lists no LOADING state meanwhile).
        return _inconclusive(name, "served version not READY while a command is switching the model")
    return Finding(name, Outcome.OK if obs.served_ready else Outcome.BREACH,
                   "" if obs.served_ready else "served version is not READY")


def _resources(name: str, rule: Resources, obs: Observation) -> Finding:
    if obs.cpu_utilization is None and obs.memory_bytes is None:
        return _inconclusive(name, "Triton exposes no resource metrics")
    problems, values = [], {}
    if obs.cpu_utilization is not None:
        values["cpu_utilization"] = obs.cpu_utilization
        if obs.cpu_utilization > rule.max_cpu_utilization:
            problems.append(f"CPU utilization {obs.cpu_utilization:.0%} (max {rule.max_cpu_utilization:.0%})")
    if obs.memory_bytes is not None:
        values["memory_bytes"] = obs.memory_bytes
        if rule.max_memory_bytes and obs.memory_bytes > rule.max_memory_bytes:
            problems.append(f"memory {obs.memory_bytes / 2**20:.0f} MiB (max {rule.max_memory_bytes / 2**20:.0f} MiB)")
    return Finding(name, Outcome.BREACH if problems else Outcome.OK, "; ".join(problems), values)


def _drift(name: str, rule: Drift, obs: Observation) -> Finding:
    window = obs.drift
    if window is None:
        return _inconclusive(name, obs.drift_pending or "no window of production outputs closed")
    if window.baseline is None:
        return _inconclusive(name, window.why or "no baseline yet")
    if window.statistic == DETECTIONS:
        return _detection_drift(name, rule, window)
    deviation = worst_deviation(window.statistic, window.value, window.baseline, rule.window)
    values = {"z": deviation.z, "value": deviation.value, "baseline_mean": deviation.mean,
              "baseline_sigma": deviation.sigma, "samples": float(window.samples)}
    if deviation.z <= rule.sigmas:
        return Finding(name, Outcome.OK, "", values, alert_only=window.own)
    what = (f"class {deviation.component} share" if window.statistic == "class_histogram"
            else f"{window.statistic.replace('_', ' ')}")
    whose = "its own" if window.own else f"v{window.reference}'s"
    return Finding(name, Outcome.BREACH, f"{what} {deviation.value:.3g} over {window.samples} production outputs, "
                   f"{deviation.z:.1f} sigma from {whose} baseline {deviation.mean:.3g} +/- {deviation.sigma:.2g} "
                   f"(max {rule.sigmas:g})" + (": the inputs drifted" if window.own else ""),
                   values, alert_only=window.own)


def _detection_drift(name: str, rule: Drift, window: DriftWindow) -> Finding:
    """A window of a detector's frames: detections per frame within mean +/- sigmas x sigma, class shares within
    ``max_class_shift`` (total variation) of the baseline's."""
    assert window.baseline is not None
    found = judge(window.value, window.baseline, rule.window)
    values = {"z": found.z, "value": found.per_frame, "baseline_mean": found.mean, "baseline_sigma": found.sigma,
              "samples": float(window.samples)}
    if found.shift is not None:
        values["class_shift"] = found.shift
    whose = "its own" if window.own else f"v{window.reference}'s"
    problems = []
    if found.z > rule.sigmas:
        problems.append(f"{found.per_frame:.2f} detections per frame over {window.samples} frames, {found.z:.1f} "
                        f"sigma from {whose} baseline {found.mean:.2f} +/- {found.sigma:.2g} (max {rule.sigmas:g})")
    if found.shift is not None and found.shift > rule.max_class_shift:
        problems.append(f"class shares of {found.boxes:.0f} boxes moved {found.shift:.2f} (total variation) from "
                        f"{whose} baseline (max {rule.max_class_shift:g})")
    if not problems:
        return Finding(name, Outcome.OK, "", values, alert_only=window.own)
    prefix = f"{window.source}: " if window.source else ""
    return Finding(name, Outcome.BREACH, prefix + "; ".join(problems) + (": the inputs drifted" if window.own else ""),
                   values, alert_only=window.own)


_JUDGES = {
    OutputSanity: _output_sanity,
    Divergence: _divergence,
    GoldenScore: _golden_score,
    ProbeErrors: _probe_errors,
    ErrorRate: _error_rate,
    Latency: _latency,
    Health: _health,
    Resources: _resources,
    Drift: _drift,
}


# --- debounce ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Streak:
    count: int = 0
    first_breach: float | None = None  # time of the first breaching observation of the streak
    fired: bool = False  # the anomaly for this streak was already raised


@dataclass(frozen=True)
class Anomaly:
    rule: str
    severity: Severity
    finding: Finding
    first_breach: float
    decided: float

    @property
    def detection_latency_s(self) -> float:
        return self.decided - self.first_breach


def step(streaks: dict[str, Streak], findings: list[Finding], policy: WatchPolicy, now: float,
         in_grace: bool) -> tuple[dict[str, Streak], list[Anomaly]]:
    """Advance each rule's streak by one finding; return the anomalies that just crossed their threshold."""
    updated = dict(streaks)
    anomalies = []
    for finding in findings:
        rule = policy.rules[finding.rule]
        streak = updated.get(finding.rule, Streak())
        if rule.severity is Severity.OFF or (rule.after_grace and in_grace):
            updated[finding.rule] = Streak()
            continue
        if finding.outcome is Outcome.INCONCLUSIVE:
            continue  # neither extends nor resets a streak
        if finding.outcome is Outcome.OK:
            updated[finding.rule] = Streak()
            continue
        first = streak.first_breach if streak.first_breach is not None else now
        streak = replace(streak, count=streak.count + 1, first_breach=first)
        sustained = rule.sustain_s <= 0 or now - first >= rule.sustain_s
        if streak.count >= rule.for_checks and sustained and not streak.fired:
            severity = Severity.ALERT if finding.alert_only else rule.severity
            anomalies.append(Anomaly(finding.rule, severity, finding, first, now))
            streak = replace(streak, fired=True)
        updated[finding.rule] = streak
    return updated, anomalies
