"""Watch rules and their verdicts: pure functions of a policy and an observation.

A rule breaches, holds, or is inconclusive (no data: never a pass, never a breach). A
breach becomes an anomaly only after it held for ``for_checks`` consecutive checks
(debounce), and rules that judge speed or load wait out a grace period after every switch
(cold start is not an anomaly). An anomaly is a value; the daemon decides what to do.

Defaults (``watch:`` in ``<state>/<model>/policy.yaml``, every field optional):

    watch:
      interval_s: 0.05        # one probe (golden samples to the served version) per interval
      probe_batch: 4          # golden samples per probe
      metrics_interval_s: 1.0 # Triton /metrics scrape
      grace_s: 10             # after a switch, latency/error-rate/resources wait this long
      webhook: null           # URL notified (POST JSON) on rollbacks and alerts
      rules:
        output_sanity: {severity: rollback, for_checks: 1, bound: 1.0e6}
        divergence:    {severity: rollback, for_checks: 1, window: 20, max_mean_abs: 1.0, min_top1_agreement: 0.3}
        golden_score:  {severity: rollback, for_checks: 1, max_drop: 0.10}
        probe_errors:  {severity: rollback, for_checks: 2}
        error_rate:    {severity: rollback, for_checks: 2, max_rate: 0.05, min_requests: 20}
        latency:       {severity: rollback, for_checks: 3, max_ratio: 2.0, min_requests: 20}
        health:        {severity: rollback, for_checks: 3}
        resources:     {severity: alert, for_checks: 5, max_cpu_utilization: 0.98, max_memory_bytes: 0}
        drift:         {severity: alert, for_checks: 3, statistic: class_histogram, output: "", threshold: 0.5,
                        window: 50, sigmas: 3.0, baseline_windows: 20, samples_per_s: 0}

Drift judges real production outputs, sampled by Triton's tensor tracing at about
``samples_per_s`` (see ``production.py``): one finding per window of ``window`` outputs,
so ``for_checks`` counts windows. A version is judged against the last verified version's
baseline until it has recorded its own; from then on against its own, and a breach is
then an alert whatever the severity, since the inputs moved and no other version would
help. It alerts by default because a legitimate upgrade may move the distribution too.

Drift samples nothing until ``samples_per_s`` is set (2 is a good start): Triton 2.51 (the
pytriton build) segfaulted once while tracing production at 20 samples/s through a version
switch (1 crash in about 150 switches measured with tracing on), and a crashed server is
worse than a missed drift. Re-measure on your Triton build before turning it on.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from orchestrator.core.checks import sanity
from orchestrator.core.drift import STATISTICS, DriftWindow, baseline_key, worst_deviation


class Severity(str, enum.Enum):
    ROLLBACK = "rollback"
    ALERT = "alert"
    OFF = "off"


class Outcome(str, enum.Enum):
    OK = "ok"
    BREACH = "breach"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Rule:
    severity: Severity = Severity.ROLLBACK
    for_checks: int = 1
    after_grace: bool = False  # judged only once the grace period after a switch is over

    def __post_init__(self) -> None:
        if self.for_checks < 1:
            raise ValueError("for_checks must be >= 1")


@dataclass(frozen=True)
class OutputSanity(Rule):
    bound: float = 1.0e6


@dataclass(frozen=True)
class Divergence(Rule):
    window: int = 20  # samples compared at once: one disagreeing sample says little
    max_mean_abs: float = 1.0
    min_top1_agreement: float = 0.3


@dataclass(frozen=True)
class GoldenScore(Rule):
    max_drop: float = 0.10


@dataclass(frozen=True)
class ProbeErrors(Rule):
    for_checks: int = 2


@dataclass(frozen=True)
class ErrorRate(Rule):
    for_checks: int = 2
    after_grace: bool = True
    max_rate: float = 0.05
    min_requests: int = 20


@dataclass(frozen=True)
class Latency(Rule):
    for_checks: int = 3
    after_grace: bool = True
    max_ratio: float = 2.0
    min_requests: int = 20


@dataclass(frozen=True)
class Health(Rule):
    for_checks: int = 3


@dataclass(frozen=True)
class Resources(Rule):
    severity: Severity = Severity.ALERT
    for_checks: int = 5
    after_grace: bool = True
    max_cpu_utilization: float = 0.98
    max_memory_bytes: float = 0.0  # 0: not checked


@dataclass(frozen=True)
class Drift(Rule):
    severity: Severity = Severity.ALERT
    for_checks: int = 3  # consecutive windows: a sustained shift, not one odd window
    statistic: str = "class_histogram"  # or detection_count, mean
    output: str = ""  # output tensor; "" is the model's first
    threshold: float = 0.5  # detection_count: an element above it is a detection
    window: int = 50  # production outputs per window
    sigmas: float = 3.0
    baseline_windows: int = 20  # healthy windows recorded before a version's baseline is used
    samples_per_s: float = 0.0  # tracing budget; 0 (the default) samples nothing: see above

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.statistic not in STATISTICS:
            raise ValueError(f"drift statistic must be one of {', '.join(STATISTICS)}")
        if self.window < 2 or self.baseline_windows < 2 or self.sigmas <= 0 or self.samples_per_s < 0:
            raise ValueError("drift needs window >= 2, baseline_windows >= 2, sigmas > 0, samples_per_s >= 0")

    @property
    def sampling(self) -> bool:
        return self.severity is not Severity.OFF and self.samples_per_s > 0

    def output_of(self, outputs: list[str]) -> str:
        """The output tensor judged: the named one, else the model's first."""
        return self.output or outputs[0]

    def baseline_key(self, outputs: list[str]) -> str:
        return baseline_key(self.statistic, self.output_of(outputs), self.window, self.threshold)


RULE_TYPES: dict[str, type[Rule]] = {
    "output_sanity": OutputSanity,
    "divergence": Divergence,
    "golden_score": GoldenScore,
    "probe_errors": ProbeErrors,
    "error_rate": ErrorRate,
    "latency": Latency,
    "health": Health,
    "resources": Resources,
    "drift": Drift,
}


@dataclass(frozen=True)
class WatchPolicy:
    interval_s: float = 0.05
    probe_batch: int = 4
    metrics_interval_s: float = 1.0
    grace_s: float = 10.0
    webhook: str | None = None
    rules: dict[str, Rule] = field(default_factory=lambda: {name: cls() for name, cls in RULE_TYPES.items()})

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.metrics_interval_s <= 0 or self.grace_s < 0 or self.probe_batch < 1:
            raise ValueError("interval_s, metrics_interval_s and probe_batch must be positive, grace_s >= 0")


def parse_watch_policy(raw: Any) -> WatchPolicy:
    """``watch:`` mapping -> WatchPolicy; ValueError names the bad setting."""
    if raw is None:
        return WatchPolicy()
    if not isinstance(raw, dict):
        raise ValueError("watch must be a mapping")
    unknown = set(raw) - {"interval_s", "probe_batch", "metrics_interval_s", "grace_s", "webhook", "rules"}
    if unknown:
        raise ValueError(f"unknown watch setting(s) {', '.join(sorted(unknown))}")
    rules = dict(WatchPolicy().rules)
    for name, settings in (raw.get("rules") or {}).items():
        if name not in RULE_TYPES:
            raise ValueError(f"unknown watch rule {name!r} (rules: {', '.join(RULE_TYPES)})")
        rules[name] = _rule(RULE_TYPES[name], settings or {}, name)
    top: dict[str, Any] = {k: float(raw[k]) for k in ("interval_s", "metrics_interval_s", "grace_s") if k in raw}
    if "probe_batch" in raw:
        top["probe_batch"] = int(raw["probe_batch"])
    return WatchPolicy(**top, webhook=raw.get("webhook"), rules=rules)


def _rule(cls: type[Rule], settings: dict[str, Any], name: str) -> Rule:
    defaults = {f.name: f.default for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in defaults:
            raise ValueError(f"rule {name}: unknown setting {key!r}")
        if key == "severity":
            values[key] = Severity(value)
        else:
            values[key] = type(defaults[key])(value)
    return cls(**values)


# --- observations and verdicts ----------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """What one check saw; None means 'not measured this time'."""

    time: float
    live: bool
    served_ready: bool | None = None
    probe_ok: bool | None = None
    probe_error: str = ""
    outputs: dict[str, np.ndarray] | None = None  # served version, this probe
    window: dict[str, np.ndarray] | None = None  # served version, the last probes' samples
    baseline: dict[str, np.ndarray] | None = None  # last verified version, the same samples as window
    golden_accuracy: float | None = None  # completed pass of the golden set through the served version
    baseline_accuracy: float | None = None
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
    verdict = sanity(obs.outputs, rule.bound)
    return Finding(name, Outcome.OK if verdict.passed else Outcome.BREACH, verdict.reason)


def _divergence(name: str, rule: Divergence, obs: Observation) -> Finding:
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


def _golden_score(name: str, rule: GoldenScore, obs: Observation) -> Finding:
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
        streak = replace(streak, count=streak.count + 1,
                         first_breach=streak.first_breach if streak.first_breach is not None else now)
        if streak.count >= rule.for_checks and not streak.fired:
            severity = Severity.ALERT if finding.alert_only else rule.severity
            anomalies.append(Anomaly(finding.rule, severity, finding, streak.first_breach or now, now))
            streak = replace(streak, fired=True)
        updated[finding.rule] = streak
    return updated, anomalies
