"""Drift of a detector's production answers: detections per frame and class shares, per window of frames.

Pure: numpy and core only. ``core/drift.py`` cuts rows into windows and keeps the baselines (the
``detections`` statistic); this module says what a frame's row is and judges a window against a
baseline. The policy and its defaults are in ``core/policy.py`` (rule ``drift``).

A frame's row (``frame_rows``), for ``classes`` classes, counts the boxes scoring above the
threshold (a NaN score never does):

    [boxes, boxes of class 0, ..., boxes of class classes-1, boxes of any other class]

A window's value is its frames' mean row: detections per frame, then each class's boxes per frame.
Windows hold the same number of frames, so the baseline's mean of those per-class rates is the
pooled class mix of its windows, which a window without boxes does not skew as an average of
shares would.

A window against a baseline of windows whose detections per frame have mean ``m`` and spread ``s``:

    sigma = max(s, sqrt(max(m, 1/window) / window))  the Poisson standard error of a window's mean
                                                     is the floor: a baseline of identical windows
                                                     is no hair trigger
    z     = |detections per frame - m| / sigma        outside m +/- k sigma when z > k
    shift = 1/2 sum_k |share_k - baseline share_k|    total variation distance of the class shares
                                                      (the last share: other classes); None when
                                                      the window or the baseline has no boxes
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.core.detection import Boxes, decode
from orchestrator.core.drift import Baseline


def detections_of(outputs: Mapping[str, np.ndarray]) -> list[Boxes]:
    """The frames of one answer (BOXES, SCORES, CLASSES, COUNT), a model without a batch axis included;
    ValueError when they are not detections (``detection.decode``)."""
    boxes = outputs.get("BOXES")
    if boxes is not None and np.ndim(boxes) == 2:  # (K, 4): one frame, no batch axis
        outputs = {name: np.asarray(value)[None] for name, value in outputs.items()}
    return decode(outputs)


def frame_rows(frames: Sequence[Boxes], classes: int, threshold: float) -> np.ndarray:
    """One row per frame: boxes above ``threshold``, then those of each class 0..classes-1, then any other's."""
    if classes < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    rows = np.zeros((len(frames), classes + 2))
    for index, frame in enumerate(frames):
        kept = frame.classes
        if frame.scores is not None:
            with np.errstate(invalid="ignore"):
                kept = kept[frame.scores > threshold]
        inside = kept[(kept >= 0) & (kept < classes)]
        rows[index, 0] = len(kept)
        rows[index, 1:classes + 1] = np.bincount(inside, minlength=classes)[:classes]
        rows[index, classes + 1] = len(kept) - len(inside)
    return rows


def class_shares(value: np.ndarray) -> np.ndarray | None:
    """A window's (or a baseline's) share of its boxes per class, the last one other classes; None without boxes."""
    rates = np.asarray(value, dtype=np.float64)[1:]
    total = float(rates.sum())
    return rates / total if total > 0 and math.isfinite(total) else None


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the sum of absolute differences of two distributions: 0 the same, 1 nothing in common."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def count_floor(mean: float, window: int) -> float:
    """The least sigma of a window's detections per frame: the Poisson standard error of a mean of ``window``
    frames, with at least one detection in the window as the rate."""
    return math.sqrt(max(mean, 1.0 / window) / window)


@dataclass(frozen=True)
class DetectionDeviation:
    per_frame: float  # the window's detections per frame
    mean: float  # the baseline's
    sigma: float
    z: float
    shift: float | None  # total variation distance of the class shares; None: no boxes to share
    boxes: float  # the window's boxes (all classes)


def judge(value: np.ndarray, baseline: Baseline, window: int) -> DetectionDeviation:
    """How far one window of ``window`` frames is from the baseline (see the module's docstring)."""
    value = np.asarray(value, dtype=np.float64)
    mean = np.asarray(baseline.mean, dtype=np.float64)
    if len(value) < 3 or len(value) != len(mean):
        raise ValueError(f"a window of {len(value)} values for a detections baseline of {len(mean)}")
    sigma = max(float(baseline.sigma()[0]), count_floor(float(mean[0]), window))
    z = abs(float(value[0]) - float(mean[0])) / sigma
    shares, reference = class_shares(value), class_shares(mean)
    shift = total_variation(shares, reference) if shares is not None and reference is not None else None
    return DetectionDeviation(per_frame=float(value[0]), mean=float(mean[0]), sigma=sigma,
                              z=z if math.isfinite(z) else math.inf, shift=shift,
                              boxes=float(value[0]) * window)
