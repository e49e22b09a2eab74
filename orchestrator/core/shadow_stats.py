"""Streaming divergence statistics: candidate outputs against the outputs production served.

Pure and bounded: each accumulator keeps sums and extremes, never the samples, and the
latency window keeps only the most recent values. Replayed inputs come from Triton's
trace text (six significant digits), so an identical candidate shows differences near
1e-6, not exactly zero: policies must leave room for that.

A detector's padded outputs (``core.detection.DetectionOutputs``: BOXES, SCORES, CLASSES,
COUNT) are judged as detections, not element by element: boxes matched one-to-one at IoU 0.5
with the same class (``core.detection.agreement``, as the watcher's divergence rule does),
the difference in boxes per frame, and each side's class shares.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

LATENCY_WINDOW = 4096
_EPS = 1e-12


@dataclass(frozen=True)
class TensorSummary:
    samples: int = 0  # rows (batch items) compared
    mean_abs_diff: float = 0.0
    max_abs_diff: float = 0.0
    mean_rel_diff: float = 0.0  # per row: |c - s| / |s| (L2 norms)
    max_rel_diff: float = 0.0
    mean_cosine: float = 1.0
    min_cosine: float = 1.0
    candidate_nan: int = 0
    candidate_inf: int = 0
    served_nan: int = 0
    served_inf: int = 0
    top1_agreement: float | None = None  # classifier-shaped outputs only (rows of more than one score)
    shape_mismatches: int = 0


class TensorAccumulator:
    """Running sums for one output tensor."""

    def __init__(self) -> None:
        self.rows = 0
        self.elements = 0
        self.abs_sum = 0.0
        self.abs_max = 0.0
        self.rel_sum = 0.0
        self.rel_max = 0.0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.nonfinite = {"candidate_nan": 0, "candidate_inf": 0, "served_nan": 0, "served_inf": 0}
        self.top1_rows = 0
        self.top1_same = 0
        self.shape_mismatches = 0

    def add(self, candidate: np.ndarray, served: np.ndarray) -> None:
        # Here, not at the top: the report values below are read by every command (status, promote), which
        # need not pay numpy's ~100 ms import; only the shadow worker accumulates.
        import numpy as np  # noqa: PLC0415

        if candidate.shape != served.shape:
            self.shape_mismatches += 1
            return
        c = candidate.astype(np.float64).reshape(len(candidate) if candidate.ndim > 1 else 1, -1)
        s = served.astype(np.float64).reshape(c.shape)
        self.nonfinite["candidate_nan"] += int(np.isnan(c).sum())
        self.nonfinite["candidate_inf"] += int(np.isinf(c).sum())
        self.nonfinite["served_nan"] += int(np.isnan(s).sum())
        self.nonfinite["served_inf"] += int(np.isinf(s).sum())
        finite = np.isfinite(c) & np.isfinite(s)
        # Non-finite values are counted above; the distances are over what both sides can compare.
        c, s = np.where(finite, c, 0.0), np.where(finite, s, 0.0)
        diff = np.abs(c - s)
        self.elements += int(finite.sum())
        self.abs_sum += float(diff.sum())
        self.abs_max = max(self.abs_max, float(diff.max(initial=0.0)))
        diff_norm = np.linalg.norm(c - s, axis=1)
        c_norm, s_norm = np.linalg.norm(c, axis=1), np.linalg.norm(s, axis=1)
        rel = diff_norm / np.maximum(s_norm, _EPS)
        both_zero = (c_norm < _EPS) & (s_norm < _EPS)
        cos = np.where(both_zero, 1.0, (c * s).sum(axis=1) / np.maximum(c_norm * s_norm, _EPS))
        self.rows += len(c)
        self.rel_sum += float(rel.sum())
        self.rel_max = max(self.rel_max, float(rel.max(initial=0.0)))
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min(initial=1.0)))
        if c.shape[1] > 1:
            self.top1_rows += len(c)
            self.top1_same += int((c.argmax(axis=1) == s.argmax(axis=1)).sum())

    def summary(self) -> TensorSummary:
        rows = max(self.rows, 1)
        return TensorSummary(
            samples=self.rows,
            mean_abs_diff=self.abs_sum / max(self.elements, 1),
            max_abs_diff=self.abs_max,
            mean_rel_diff=self.rel_sum / rows,
            max_rel_diff=self.rel_max,
            mean_cosine=self.cos_sum / rows if self.rows else 1.0,
            min_cosine=self.cos_min,
            top1_agreement=self.top1_same / self.top1_rows if self.top1_rows else None,
            shape_mismatches=self.shape_mismatches,
            **self.nonfinite,
        )


DETECTION_TENSORS = ("BOXES", "SCORES", "CLASSES", "COUNT")  # core.detection.DetectionOutputs().names()


def is_detection(outputs: Mapping[str, object]) -> bool:
    """A detector's outputs: judged by ``DetectionAccumulator``, not tensor by tensor."""
    return all(name in outputs for name in DETECTION_TENSORS)


@dataclass(frozen=True)
class DetectionSummary:
    frames: int = 0  # frames compared (a request of batch 4 counts 4)
    matched_share: float = 1.0  # boxes matched at IoU 0.5, same class, over the larger count of each frame
    count_diff: float = 0.0  # mean over frames of |candidate boxes - production's|
    candidate_per_frame: float = 0.0
    served_per_frame: float = 0.0
    candidate_class_shares: dict[int, float] = field(default_factory=dict)  # class -> share of the side's boxes
    served_class_shares: dict[int, float] = field(default_factory=dict)
    candidate_nonfinite: int = 0  # boxes with a NaN or Inf coordinate or score
    served_nonfinite: int = 0
    undecodable: int = 0  # candidate responses that are not detections (shapes, a count outside 0..K)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DetectionSummary:
        values = dict(raw)
        for side in ("candidate_class_shares", "served_class_shares"):  # JSON made the classes strings
            values[side] = {int(k): float(v) for k, v in (raw.get(side) or {}).items()}
        return cls(**values)


class DetectionAccumulator:
    """Running counts of two detectors' agreement over the frames of every compared request."""

    def __init__(self) -> None:
        self.frames = self.matched = self.larger = self.count_diff = 0
        self.boxes = {"candidate": 0, "served": 0}
        self.classes: dict[str, dict[int, int]] = {"candidate": {}, "served": {}}
        self.nonfinite = {"candidate": 0, "served": 0}
        self.undecodable = 0

    def add(self, candidate: Mapping[str, np.ndarray], served: Mapping[str, np.ndarray]) -> None:
        import numpy as np  # noqa: PLC0415 - see TensorAccumulator.add

        from orchestrator.core.detection import agreement, decode  # noqa: PLC0415

        try:
            theirs = decode(served)
        except ValueError:
            return  # production's own answer is not detections: nothing to compare with
        try:
            mine = decode(candidate)
        except ValueError:
            self.undecodable += 1
            return
        if len(mine) != len(theirs):
            self.undecodable += 1
            return
        found = agreement(mine, theirs)
        larger = sum(max(len(a), len(b)) for a, b in zip(mine, theirs, strict=True))
        self.frames += found.frames
        self.larger += larger
        self.matched += round(found.matched_share * larger) if larger else 0
        self.count_diff += sum(abs(len(a) - len(b)) for a, b in zip(mine, theirs, strict=True))
        for side, frames in (("candidate", mine), ("served", theirs)):
            for frame in frames:
                self.boxes[side] += len(frame)
                broken = ~np.isfinite(frame.boxes).all(axis=1)
                if frame.scores is not None:
                    broken |= ~np.isfinite(frame.scores)
                self.nonfinite[side] += int(broken.sum())
                counts = self.classes[side]
                for cls, n in zip(*np.unique(frame.classes, return_counts=True), strict=True):
                    counts[int(cls)] = counts.get(int(cls), 0) + int(n)

    def summary(self) -> DetectionSummary:
        frames = max(self.frames, 1)
        shares = {side: {cls: n / max(self.boxes[side], 1) for cls, n in sorted(counts.items())}
                  for side, counts in self.classes.items()}
        return DetectionSummary(
            frames=self.frames, matched_share=self.matched / self.larger if self.larger else 1.0,
            count_diff=self.count_diff / frames, candidate_per_frame=self.boxes["candidate"] / frames,
            served_per_frame=self.boxes["served"] / frames, candidate_class_shares=shares["candidate"],
            served_class_shares=shares["served"], candidate_nonfinite=self.nonfinite["candidate"],
            served_nonfinite=self.nonfinite["served"], undecodable=self.undecodable)


class LatencyWindow:
    """The most recent latencies (ms): bounded, so a long shadow costs no more memory than a short one."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, ms: float) -> None:
        self.values.append(ms)
        self.count += 1
        self.total += ms

    def summary(self) -> LatencySummary:
        if not self.values:
            return LatencySummary()
        ordered = sorted(self.values)
        return LatencySummary(count=self.count, mean_ms=self.total / self.count,
                              p50_ms=_quantile(ordered, 0.5), p99_ms=_quantile(ordered, 0.99))


@dataclass(frozen=True)
class LatencySummary:
    count: int = 0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class ShadowPhase(str, enum.Enum):
    STARTING = "starting"  # the candidate is loaded; the worker is about to trace
    RUNNING = "running"
    FAILED = "failed"  # the worker gave up (or died); the candidate entry may still be loaded
    STOPPED = "stopped"  # ``shadow stop`` closed the run: the only final phase

    @property
    def is_final(self) -> bool:
        return self is ShadowPhase.STOPPED

    @property
    def holds_candidate(self) -> bool:
        """The ``<model>__candidate`` entry is (or may be) loaded for this run."""
        return not self.is_final

    @property
    def expects_worker(self) -> bool:
        """A worker should be alive and writing heartbeats."""
        return self in (ShadowPhase.STARTING, ShadowPhase.RUNNING)


@dataclass(frozen=True)
class ShadowReport:
    """What a shadow run observed; the gate judges it, ``shadow report`` prints it."""

    model: str
    version: int
    phase: ShadowPhase = ShadowPhase.RUNNING
    reason: str = ""  # why it failed
    sampled: int = 0  # traces read for this model
    compared: int = 0  # replayed and compared
    dropped: int = 0  # sampled but not replayed: queue full, unreadable or unsupported trace, or answered by the
    # candidate's own version (production served it meanwhile: comparing it with itself proves nothing)
    candidate_errors: int = 0
    queue_high_water: int = 0
    tensors: dict[str, TensorSummary] = field(default_factory=dict)
    served_latency: LatencySummary = field(default_factory=LatencySummary)  # Triton's REQUEST_START..END
    candidate_latency: LatencySummary = field(default_factory=LatencySummary)  # the replay, client side
    candidate_server_mean_ms: float | None = None  # Triton's own statistics for the candidate
    detection: DetectionSummary | None = None  # a detector's outputs (is_detection), instead of per-tensor figures
    served_versions: dict[int, int] = field(default_factory=dict)  # production version -> requests compared

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", ShadowPhase(self.phase))

    def latency_ratio(self) -> float | None:
        """Candidate / served mean time inside Triton (both server side, so HTTP costs cancel)."""
        served = self.served_latency.mean_ms
        candidate = self.candidate_server_mean_ms
        if candidate is None or served <= 0:
            return None
        return candidate / served

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "phase": self.phase.value}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShadowReport:
        values = dict(raw)
        values["tensors"] = {name: TensorSummary(**t) for name, t in (raw.get("tensors") or {}).items()}
        values["served_latency"] = LatencySummary(**(raw.get("served_latency") or {}))
        values["candidate_latency"] = LatencySummary(**(raw.get("candidate_latency") or {}))
        if raw.get("detection") is not None:
            values["detection"] = DetectionSummary.from_dict(raw["detection"])
        values["served_versions"] = {int(k): int(v) for k, v in (raw.get("served_versions") or {}).items()}
        return cls(**values)
