"""Every per-model policy as values, and the one builder that reads them from plain mappings.

``<state>/<model>/policy.yaml`` (read by ``store/policyfile.py``) has five sections, every
field optional; the defaults are what an operator gets with no file.

    promotion:
      warmup_requests: 5      # golden batches sent to a candidate before it is judged
      output_bound: 1.0e6     # an output with |x| above this is "exploding"
      max_score_drop: 0.0     # candidate golden accuracy may trail the served one by this much
      min_score: 0.0          # and must reach at least this
      keep_resident: 1        # verified fallbacks kept loaded below the served version
      golden: golden          # folder (relative to the model): inputs.npy (or <INPUT>.npy) and labels.npy
                              # for a classifier, truth.npy (frame, class, x1, y1, x2, y2 rows) for a detector
      batch_size: 8           # golden inputs per request
      memory_headroom_mb: 256 # device memory that must stay free with the candidate loaded
      free_fallback_for_memory: false  # when short of memory, unload the resident fallback first
      route: ""               # the ensemble clients call (verified and probed through); "" finds the one
                              # ensemble whose step follows this model (model_version: -1), else the model
      max_map_drop: 0.0       # detectors (a golden set with truth.npy): candidate mAP may trail the served
                              # one by this much (absolute: 0.03 is "mAP_diff < 3 points")
      min_map: 0.0            # and must reach at least this
      map_metric: map50_95    # the mAP gated: map50_95 (COCO, IoU 0.5:0.95) or map50 (IoU 0.5)

    shadow:                   # the gate of ``orchestrate shadow`` (core/shadow_gate.py)
      require: false            # promote refuses a version without a passed shadow run
      min_samples: 200          # fewer compared requests: inconclusive, never a pass
      max_mean_abs_diff: 1.0e-3 # per output tensor
      min_cosine: 0.999         # mean per-row cosine similarity, per output tensor
      min_top1_agreement: 0.99  # classifier-shaped outputs
      min_box_agreement: 0.9    # detectors (BOXES, SCORES, CLASSES, COUNT): share of boxes matched one-to-one
                                # with production's at IoU 0.5 with the same class
      max_count_diff: 0.3       # detectors: mean |boxes per frame - production's|
      max_latency_ratio: 1.5    # candidate / served mean time inside Triton
      latency_slack_ms: 0.5     # ...failing only when the candidate is also this much slower

    watch:                    # the watcher's rules (judged in core/rules.py)
      interval_s: 0.05        # the shortest time between probes (golden samples to the served version)
      probe_batch: 4          # golden samples per probe
      probe_budget: 0.01      # all watched models' probes may use this share of the device's time (0.01: 1%); 0: none
      bake_budget: 0.2        # ...and this share for bake_s after every switch, when a new version is most
      bake_s: 300             # likely to fail
      metrics_interval_s: 1.0 # Triton /metrics scrape (and the probes' cost read from Triton's statistics)
      grace_s: 10             # after a switch, latency/error-rate/resources wait this long
      max_rollbacks: 3        # the loop breaker: this many automatic rollbacks within
      rollback_window_s: 600  # ...this window, or a fallback that breaches within it: stop, alert
      webhook: null           # URL notified (POST JSON) on rollbacks and alerts
      rules:
        output_sanity: {severity: rollback, for_checks: 1, bound: 1.0e6}
        divergence:    {severity: rollback, for_checks: 1, window: 20, max_mean_abs: 1.0, min_top1_agreement: 0.3,
                        min_box_agreement: 0.5, max_count_diff: 1.0}   # the last two: detectors
        golden_score:  {severity: rollback, for_checks: 1, max_drop: 0.10, max_map_drop: 0.10}
        probe_errors:  {severity: rollback, for_checks: 2}
        error_rate:    {severity: rollback, for_checks: 2, max_rate: 0.05, min_requests: 20}
        latency:       {severity: rollback, for_checks: 3, max_ratio: 2.0, min_requests: 20}
        health:        {severity: rollback, for_checks: 3}
        resources:     {severity: alert, for_checks: 5, max_cpu_utilization: 0.98, max_memory_bytes: 0}
        drift:         {severity: alert, for_checks: 3, statistic: class_histogram, output: "", threshold: 0.5,
                        window: 50, sigmas: 3.0, baseline_windows: 20, samples_per_s: 0,
                        for_s: null, classes: 0, max_class_shift: 0.2}   # the last three: see "detections"

    retention:                # old version folders pruned by the watcher (core/retention.py); off by default
      enabled: false            # deleting files is opted into: `orchestrate prune` works either way
      keep: 3                   # newest versions kept besides the served, resident and last verified ones
      every_s: 3600             # the watcher prunes at most this often

    replay:                   # recorded production inputs, replayed at promote (usecases/replay.py); off by default
      enabled: false            # RECORDS PRODUCTION DATA into <state>/<model>/replay/ (see below)
      max_mb: 64                # the ring's bound: the oldest records go first, never more on disk
      every_n: 20               # keep 1 sampled request in N
      min_samples: 50           # fewer recorded inputs replayed: inconclusive (said, promote goes on)
      require: false            # ...unless this: then fewer refuse the promote
      min_top1_agreement: 0.5   # classifier outputs: candidate and served agree on the top class
      min_box_agreement: 0.6    # detector outputs: share of boxes matched (IoU 0.5, same class)
      max_count_diff: 1.0       # detector outputs: mean |boxes per frame, candidate - served|
      limit: 200                # the newest recorded inputs (requests) replayed at promote

The replay gate compares the candidate with the served version, not with the truth (production
inputs have none), so its defaults catch a candidate that breaks on real inputs and let an upgrade
through. Measured on the samples: boxes shifted by half their size agree 0.03, swapped classes 0.02,
the classifier's drift fault 0.09; the better detector against v1 0.83 (0.45 boxes per frame
apart), the better classifier against v1 0.60. Raise them for a release meant to change nothing
(an engine rebuilt for a new TensorRT).

The shadow gate's latency slack is there because a candidate sees only the sampled requests:
on a sub-millisecond model the ratio then measures how long its idle backend takes to wake
(measured on the CPU sample: an identical candidate at 1 replay per 20 ms read 0.68 ms against
production's 0.45 ms, 1.5x), not the model.

The probe budget (``core/probe_budget.py``) is a share of the device's time: at steady state the
device's, split evenly among the models one daemon watches (ten models at 1%: 0.1% each); during the
bake the switched model's own. A probe costs the compute time of one execution of each model it passes through, from
Triton's own statistics (an ensemble's pre-processing, network and post-processing add up), plus
the watcher's own CPU time for sending and judging it. A probe runs when the budget has that much
credit and ``interval_s`` has passed since the last one: on the CPU sample classifier (0.2-0.8 ms
an execution, about as much again in the watcher) 1% allows 5-20 probes a second; on a 25 ms
detector, one every 2.5 s (one every 125 ms during the bake). ``orchestrate status`` shows the share in force. Triton's
metrics and the drift sampler cost no inference and keep their own schedule.

Drift judges real production outputs, sampled by Triton's tensor tracing at about
``samples_per_s`` (``daemons/sampler.py``): one finding per window of ``window`` outputs, so
``for_checks`` counts windows. A version is judged against the last verified version's
baseline until it has recorded its own; from then on against its own, and a breach is then an
alert whatever the severity, since the inputs moved and no other version would help. It alerts
by default because a legitimate upgrade may move the distribution too. Drift samples nothing
until ``samples_per_s`` is set (2 is a good start): Triton 2.51 (the pytriton build) segfaulted
once while tracing production at 20 samples/s through a version switch (1 crash in about 150
switches measured with tracing on), and a crashed server is worse than a missed drift.
Re-measure on your Triton build before turning it on.

A detector's drift is ``statistic: detections`` (``core/detection_drift.py``): its decoded outputs
(BOXES, SCORES, CLASSES, COUNT: through its ensemble, the route clients take, whose ``detector``
step's entry in each trace names the version that answered) give per window of ``window`` frames
the detections per frame (boxes scoring above ``threshold``) and the class shares of those boxes,
over classes ``0..classes-1`` plus one share for any other (``classes: 0``: as many as the golden
set's truth.npy names). A window breaches when its detections per frame are outside the baseline's
mean +/- ``sigmas`` x sigma (sigma: the spread of the baseline windows' means, never below the
Poisson standard error of a window's mean, sqrt(mean / window)), or when its class shares are more
than ``max_class_shift`` from the baseline's in total variation distance (half the sum of the
absolute share differences; a window without boxes has no shares to judge). A breach is an anomaly
once it held ``for_checks`` windows and ``for_s`` seconds: "detections per frame outside mean +/-
3 sigma for 2 minutes" is the default (``for_s: null`` is 120 s for detections, 0 for the other
statistics, whose windows alone debounce). Simulated with the sample detector's mix on its golden
set (1.56 boxes per frame above 0.5, classes 0.30/0.20/0.18/0.33, Poisson counts): a window of 50
frames is more than 0.2 from the true shares 0.14% of the time, one of 20 frames 9%, one of 10
frames 34%: raise ``max_class_shift`` for short windows. Its classes swapped pairwise (the
``confused`` fault) move those shares by 0.25; no detections at all (``empty``) is 1.56 / 0.177 =
8.8 sigma at the floor of a 50-frame window.

Replay keeps real client inputs on disk, a size-bounded ring (``store/replay_ring.py``), so
that at promote time the candidate and the served version both answer them and the gate
compares the two (``core/replay_gate.py``): a candidate faces real inputs even when traffic is
too thin for a shadow run. It holds production data: turn it on only where keeping clients'
inputs on the device is allowed. A model clients call directly records what the drift sampler
already traces (``enabled: true`` and ``drift.samples_per_s`` > 0: the tracing cap is never
raised for replay); a model behind an ensemble records in the ensemble's first step instead,
without Triton's tracing, once ``orchestrate replay enable MODEL`` configured that step (the
gate then runs whether or not ``enabled`` is set here). The watcher's probes and promote's
golden runs pass through what records, and a replay sends recorded inputs through it again: the
ring skips golden inputs and repeats of its records, and the gate skips any that got in. It
never judges the first version served (nothing to compare with).

Replay measures agreement with the served version, not accuracy (recorded inputs have no
labels): a candidate that fixes the served version's mistakes disagrees exactly there.
Measured on the sample classifier: the better head (golden accuracy 0.97 against 0.65) agrees
with the baseline on 0.60 of new images, so the default 0.95 would refuse that upgrade; lower
the thresholds for a release meant to change answers.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

# The drift statistics (core/drift.py computes them; numpy is imported only there, not for reading a policy).
STATISTICS = ("class_histogram", "detection_count", "mean", "detections")
DETECTIONS = "detections"  # a detector's decoded outputs: detections per frame and class shares
DETECTIONS_SUSTAIN_S = 120.0  # "outside mean +/- 3 sigma for 2 minutes"
MAP_METRICS = ("map50_95", "map50")


def baseline_key(statistic: str, output: str, window: int, threshold: float, classes: int = 0) -> str:
    """What a baseline was measured with: one measured otherwise cannot be compared."""
    suffix = f":{threshold:g}" if statistic in ("detection_count", DETECTIONS) else ""
    if statistic == DETECTIONS:
        suffix += f":{classes}"
    return f"{statistic}:{output}:{window}{suffix}"


T = TypeVar("T")


class PolicyError(ValueError):
    """A setting that cannot be used; the message names the section and the setting."""


@dataclass(frozen=True)
class PromotionPolicy:
    warmup_requests: int = 5
    output_bound: float = 1.0e6
    max_score_drop: float = 0.0
    min_score: float = 0.0
    keep_resident: int = 1
    golden: str = "golden"
    batch_size: int = 8
    memory_headroom_mb: float = 256.0
    free_fallback_for_memory: bool = False
    route: str = ""
    max_map_drop: float = 0.0
    min_map: float = 0.0
    map_metric: str = "map50_95"

    @property
    def memory_headroom_bytes(self) -> int:
        return int(self.memory_headroom_mb * 2**20)

    def __post_init__(self) -> None:
        problems = []
        if not (self.memory_headroom_mb >= 0 and math.isfinite(self.memory_headroom_mb)):
            problems.append("memory_headroom_mb must be a number >= 0")
        if self.warmup_requests < 0:
            problems.append("warmup_requests must be >= 0")
        if not (self.output_bound > 0 and math.isfinite(self.output_bound)):
            problems.append("output_bound must be a positive number")
        if not 0 <= self.max_score_drop <= 1:
            problems.append("max_score_drop must be within 0..1")
        if not 0 <= self.min_score <= 1:
            problems.append("min_score must be within 0..1")
        if self.keep_resident < 0:
            problems.append("keep_resident must be >= 0")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if not 0 <= self.max_map_drop <= 1:
            problems.append("max_map_drop must be within 0..1")
        if not 0 <= self.min_map <= 1:
            problems.append("min_map must be within 0..1")
        if self.map_metric not in MAP_METRICS:
            problems.append(f"map_metric must be one of {', '.join(MAP_METRICS)}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ShadowPolicy:
    min_samples: int = 200
    max_mean_abs_diff: float = 1.0e-3
    min_cosine: float = 0.999
    min_top1_agreement: float = 0.99
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 0.5
    require: bool = False
    min_box_agreement: float = 0.9  # detectors: boxes matched with production's (IoU 0.5, same class)
    max_count_diff: float = 0.3  # detectors: mean |boxes per frame - production's|

    def __post_init__(self) -> None:
        problems = []
        if self.min_samples < 1:
            problems.append("min_samples must be >= 1")
        if self.max_mean_abs_diff < 0:
            problems.append("max_mean_abs_diff must be >= 0")
        if not -1 <= self.min_cosine <= 1:
            problems.append("min_cosine must be within -1..1")
        if not 0 <= self.min_top1_agreement <= 1:
            problems.append("min_top1_agreement must be within 0..1")
        if self.max_latency_ratio <= 0:
            problems.append("max_latency_ratio must be > 0")
        if self.latency_slack_ms < 0:
            problems.append("latency_slack_ms must be >= 0")
        if not 0 <= self.min_box_agreement <= 1:
            problems.append("min_box_agreement must be within 0..1")
        if not (self.max_count_diff >= 0 and math.isfinite(self.max_count_diff)):
            problems.append("max_count_diff must be a number >= 0")
        if problems:
            raise ValueError("; ".join(problems))


class Severity(str, enum.Enum):
    ROLLBACK = "rollback"
    ALERT = "alert"
    OFF = "off"


@dataclass(frozen=True)
class Rule:
    severity: Severity = Severity.ROLLBACK
    for_checks: int = 1
    after_grace: bool = False  # judged only once the grace period after a switch is over

    def __post_init__(self) -> None:
        if self.for_checks < 1:
            raise ValueError("for_checks must be >= 1")

    @property
    def sustain_s(self) -> float:
        """How long a breach must also have lasted to be an anomaly (0: ``for_checks`` alone)."""
        return 0.0


@dataclass(frozen=True)
class OutputSanity(Rule):
    bound: float = 1.0e6


@dataclass(frozen=True)
class Divergence(Rule):
    window: int = 20  # samples compared at once: one disagreeing sample says little
    max_mean_abs: float = 1.0
    min_top1_agreement: float = 0.3
    min_box_agreement: float = 0.5  # detectors: share of boxes matched at IoU 0.5 with the same class
    max_count_diff: float = 1.0  # detectors: mean |boxes per frame - the baseline's|


@dataclass(frozen=True)
class GoldenScore(Rule):
    max_drop: float = 0.10
    max_map_drop: float = 0.10  # detectors: mAP points (absolute) below the last verified version


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
    statistic: str = "class_histogram"  # or detection_count, mean, detections
    output: str = ""  # output tensor; "" is the model's first (what clients get: the route's, behind an ensemble)
    threshold: float = 0.5  # detection_count: an element above it is a detection; detections: a box's score
    window: int = 50  # production outputs per window (detections: frames)
    sigmas: float = 3.0
    baseline_windows: int = 20  # healthy windows recorded before a version's baseline is used
    samples_per_s: float = 0.0  # tracing budget; 0 (the default) samples nothing: see above
    for_s: float | None = None  # a breach must also last this long; None: DETECTIONS_SUSTAIN_S for detections, else 0
    classes: int = 0  # detections: classes with a share of their own; 0: as many as the golden set's truth names
    max_class_shift: float = 0.2  # detections: total variation distance of the class shares from the baseline's

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.statistic not in STATISTICS:
            raise ValueError(f"drift statistic must be one of {', '.join(STATISTICS)}")
        if self.window < 2 or self.baseline_windows < 2 or self.sigmas <= 0 or self.samples_per_s < 0:
            raise ValueError("drift needs window >= 2, baseline_windows >= 2, sigmas > 0, samples_per_s >= 0")
        if self.for_s is not None and not (self.for_s >= 0 and math.isfinite(self.for_s)):
            raise ValueError("for_s must be a number of seconds >= 0")
        if self.classes < 0:
            raise ValueError("classes must be an integer >= 0")
        if not 0 < self.max_class_shift <= 1:
            raise ValueError("max_class_shift must be within (0, 1]")

    @property
    def sustain_s(self) -> float:
        if self.for_s is not None:
            return self.for_s
        return DETECTIONS_SUSTAIN_S if self.statistic == DETECTIONS else 0.0

    @property
    def sampling(self) -> bool:
        return self.severity is not Severity.OFF and self.samples_per_s > 0

    def output_of(self, outputs: list[str]) -> str:
        """The output tensor judged: the named one, else the model's first."""
        return self.output or outputs[0]

    def baseline_key(self, outputs: list[str]) -> str:
        return baseline_key(self.statistic, self.output_of(outputs), self.window, self.threshold, self.classes)


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
    probe_budget: float = 0.01  # share of the device's time the probes may use at steady state
    bake_budget: float = 0.2  # ...and for bake_s after every switch
    bake_s: float = 300.0
    metrics_interval_s: float = 1.0
    grace_s: float = 10.0
    webhook: str | None = None
    # The loop breaker: after this many automatic rollbacks of the model within the window, or when a
    # version it rolled back to breaches within the window, the watcher stops acting and alerts.
    max_rollbacks: int = 3
    rollback_window_s: float = 600.0
    rules: dict[str, Rule] = field(default_factory=lambda: {name: cls() for name, cls in RULE_TYPES.items()})

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.metrics_interval_s <= 0 or self.grace_s < 0 or self.probe_batch < 1:
            raise ValueError("interval_s, metrics_interval_s and probe_batch must be positive, grace_s >= 0")
        if not (0 <= self.probe_budget <= 1 and 0 <= self.bake_budget <= 1):
            raise ValueError("probe_budget and bake_budget are shares of the device's time: within 0..1")
        if not (self.bake_s >= 0 and math.isfinite(self.bake_s)):
            raise ValueError("bake_s must be a number >= 0")
        if self.max_rollbacks < 1 or not self.rollback_window_s >= 0:
            raise ValueError("max_rollbacks must be >= 1 and rollback_window_s >= 0")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ValueError(f"webhook must be an http(s) URL, not {self.webhook!r}")


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``orchestrate prune`` keeps by default, and whether the watcher prunes on its own."""

    enabled: bool = False
    keep: int = 3  # the newest versions kept besides those core/retention.py always keeps
    every_s: float = 3600.0

    def __post_init__(self) -> None:
        problems = []
        if self.keep < 1:
            problems.append("keep must be an integer >= 1")
        if not (self.every_s > 0 and math.isfinite(self.every_s)):
            problems.append("every_s must be a number > 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ReplayPolicy:
    """Recording production inputs and the promote gate that replays them (see above); off by default."""

    enabled: bool = False
    max_mb: float = 64.0
    every_n: int = 20
    min_samples: int = 50  # recorded inputs (requests) replayed and compared
    require: bool = False
    min_top1_agreement: float = 0.5
    min_box_agreement: float = 0.6
    max_count_diff: float = 1.0
    limit: int = 200

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)

    def __post_init__(self) -> None:
        problems = []
        if not (self.max_mb > 0 and math.isfinite(self.max_mb)) or self.max_bytes < 1:
            problems.append("max_mb must be a number > 0")
        if self.every_n < 1:
            problems.append("every_n must be an integer >= 1")
        if self.limit < 1:
            problems.append("limit must be an integer >= 1")
        if self.min_samples < 1:
            problems.append("min_samples must be an integer >= 1")
        elif self.min_samples > self.limit:
            problems.append(f"min_samples ({self.min_samples}) must be <= limit ({self.limit}): "
                            f"no more are replayed")
        if not 0 <= self.min_top1_agreement <= 1:
            problems.append("min_top1_agreement must be within 0..1")
        if not 0 <= self.min_box_agreement <= 1:
            problems.append("min_box_agreement must be within 0..1")
        if not (self.max_count_diff >= 0 and math.isfinite(self.max_count_diff)):
            problems.append("max_count_diff must be a number >= 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Policies:
    """The five sections of one model's policy file."""

    promotion: PromotionPolicy = field(default_factory=PromotionPolicy)
    watch: WatchPolicy = field(default_factory=WatchPolicy)
    shadow: ShadowPolicy = field(default_factory=ShadowPolicy)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    replay: ReplayPolicy = field(default_factory=ReplayPolicy)


# --- the builder --------------------------------------------------------------------------

def build(cls: type[T], raw: Any, where: str) -> T:
    """``cls`` from a mapping of its fields (YAML), every value coerced to the field's type.

    PolicyError names ``where`` and the setting: unknown names, values of the wrong type, and
    whatever the class's own validation refuses.
    """
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(raw) - set(known))
    if unknown:
        raise PolicyError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, name, where) for name, value in raw.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from exc


def _coerce(kind: Any, value: Any, name: str, where: str) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else ()
    if options:  # "str | None": None stays None, anything else takes the other type
        if value is None and type(None) in options:
            return None
        kind = next(o for o in options if o is not type(None))
    if kind is bool and not isinstance(value, bool):  # "false" in quotes would be True
        raise PolicyError(f"{where}: {name} must be true or false, not {value!r}")
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise PolicyError(f"{where}: {name} must be an integer, not {value!r}")  # int() would cut 2.5 to 2
    try:
        if kind is bool:
            return value
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(value)
        if kind in (int, float, str):
            # YAML 1.1 reads "1.0e4" as a string: coerce to the field's type.
            coerced = kind(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: {name} must be a {getattr(kind, '__name__', kind)}, not {value!r}") from None
    else:
        if kind in (int, float, str):
            if kind is float and math.isnan(coerced):
                raise PolicyError(f"{where}: {name} must be a number, not NaN")
            return coerced
    return value


def build_watch(raw: Any, where: str = "watch") -> WatchPolicy:
    """The ``watch:`` section: top-level settings through ``build``, each rule through ``build`` too."""
    if raw is None:
        return WatchPolicy()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping")
    rules: dict[str, Rule] = dict(WatchPolicy().rules)
    raw_rules = raw.get("rules") or {}
    if not isinstance(raw_rules, dict):
        raise PolicyError(f"{where}: rules must be a mapping")
    for name, settings in raw_rules.items():
        if name not in RULE_TYPES:
            raise PolicyError(f"{where}: unknown watch rule {name!r} (rules: {', '.join(RULE_TYPES)})")
        rules[name] = build(RULE_TYPES[name], settings or {}, f"{where}: rule {name}")
    top = {k: v for k, v in raw.items() if k != "rules"}
    policy = build(_WatchSettings, top, where)
    try:
        return WatchPolicy(**{f.name: getattr(policy, f.name) for f in fields(_WatchSettings)}, rules=rules)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class _WatchSettings:
    """WatchPolicy without its rules: what ``build`` checks at the top of ``watch:``."""

    interval_s: float = WatchPolicy.interval_s
    probe_batch: int = WatchPolicy.probe_batch
    probe_budget: float = WatchPolicy.probe_budget
    bake_budget: float = WatchPolicy.bake_budget
    bake_s: float = WatchPolicy.bake_s
    metrics_interval_s: float = WatchPolicy.metrics_interval_s
    grace_s: float = WatchPolicy.grace_s
    webhook: str | None = None
    max_rollbacks: int = WatchPolicy.max_rollbacks
    rollback_window_s: float = WatchPolicy.rollback_window_s


def build_policies(raw: Any, where: str) -> Policies:
    """All five sections of a policy file's mapping."""
    if raw is None:
        return Policies()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping")
    return Policies(promotion=build(PromotionPolicy, raw.get("promotion"), f"{where} promotion"),
                    watch=build_watch(raw.get("watch"), f"{where} watch"),
                    shadow=build(ShadowPolicy, raw.get("shadow"), f"{where} shadow"),
                    retention=build(RetentionPolicy, raw.get("retention"), f"{where} retention"),
                    replay=build(ReplayPolicy, raw.get("replay"), f"{where} replay"))


def parse_watch_policy(raw: Any) -> WatchPolicy:
    """``watch:`` mapping -> WatchPolicy (PolicyError, a ValueError, names the bad setting)."""
    return build_watch(raw)

