"""Output distribution drift: a summary statistic of production outputs against its baseline.

Pure: no server, no files. Production outputs (sampled by ``production.py``) are grouped
into tumbling windows of ``window`` rows; each closed window gives one value of the
statistic, a vector:

    class_histogram  the share of rows whose top-1 class is k, for every class k
    detection_count  the mean number of output elements above ``threshold`` per row
                     (scores of a detector: detections per frame)
    mean             the mean output value per row
    detections       a detector's decoded outputs, a row per frame: detections per frame and
                     per class (``detection_drift.py`` makes the rows and judges the windows)

A version's baseline is the mean and standard deviation of that vector over its first
``baseline_windows`` healthy windows (Welford), then frozen. A window breaches when any
component is more than ``sigmas`` standard deviations (of a new window: ``worst_deviation``)
from the baseline mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from orchestrator.core.policy import DETECTIONS, STATISTICS


def row_features(statistic: str, output: np.ndarray, row_size: int, threshold: float) -> np.ndarray:
    """One number per row of a batch of outputs (``row_size`` elements per row)."""
    if row_size < 1 or output.size % row_size:
        raise ValueError(f"an output of {output.size} values is not rows of {row_size}")
    rows = output.reshape(-1, row_size).astype(np.float64)
    if statistic == "class_histogram":
        return rows.argmax(axis=1).astype(np.float64)
    if statistic == "detection_count":
        return (rows > threshold).sum(axis=1).astype(np.float64)
    if statistic == "mean":
        return rows.mean(axis=1)
    if statistic == DETECTIONS:
        raise ValueError("detections are rows of decoded frames (detection_drift.frame_rows), not of one output")
    raise ValueError(f"unknown drift statistic {statistic!r} (one of {', '.join(STATISTICS)})")


def summarize(statistic: str, features: np.ndarray, row_size: int) -> np.ndarray:
    """The statistic of one window of row features (detections: rows of several values, averaged each)."""
    if statistic == DETECTIONS:
        return features.mean(axis=0)
    if statistic == "class_histogram":
        counts = np.bincount(features.astype(np.int64), minlength=row_size)[:row_size]
        return counts / max(1, len(features))
    return np.array([float(features.mean())])


class WindowAccumulator:
    """Row features in arrival order (a number per row, or a vector per row), cut into tumbling windows of
    ``size`` rows."""

    def __init__(self, statistic: str, size: int, row_size: int) -> None:
        self.statistic, self.size, self.row_size = statistic, size, row_size
        self._rows: list[np.ndarray] = []

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, features: np.ndarray) -> None:
        self._rows.extend(np.asarray(features, dtype=np.float64))

    def pop(self) -> np.ndarray | None:
        """The statistic of the oldest full window, or None while it is filling."""
        if len(self._rows) < self.size:
            return None
        window, self._rows = self._rows[:self.size], self._rows[self.size:]
        return summarize(self.statistic, np.array(window), self.row_size)


@dataclass(frozen=True)
class Baseline:
    """Running mean and spread of a statistic over a version's healthy windows."""

    key: str
    windows: int = 0
    mean: tuple[float, ...] = ()
    m2: tuple[float, ...] = ()  # sum of squared deviations (Welford)

    def add(self, value: np.ndarray) -> Baseline:
        x = np.asarray(value, dtype=np.float64).ravel()
        if self.windows == 0:
            return replace(self, windows=1, mean=tuple(x.tolist()), m2=tuple([0.0] * len(x)))
        if len(x) != len(self.mean):
            raise ValueError(f"a statistic of {len(x)} values for a baseline of {len(self.mean)}")
        mean, m2 = np.array(self.mean), np.array(self.m2)
        n = self.windows + 1
        delta = x - mean
        mean = mean + delta / n
        m2 = m2 + delta * (x - mean)
        return replace(self, windows=n, mean=tuple(mean.tolist()), m2=tuple(m2.tolist()))

    def sigma(self) -> np.ndarray:
        if self.windows < 2:
            return np.zeros(len(self.mean))
        return np.sqrt(np.array(self.m2) / (self.windows - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "windows": self.windows, "mean": list(self.mean), "m2": list(self.m2)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Baseline:
        mean, m2 = tuple(float(v) for v in raw["mean"]), tuple(float(v) for v in raw["m2"])
        if len(mean) != len(m2):
            raise ValueError("baseline mean and m2 differ in length")
        return cls(key=str(raw["key"]), windows=int(raw["windows"]), mean=mean, m2=m2)


def sigma_floor(statistic: str, mean: np.ndarray, value: np.ndarray, window: int, windows: int) -> np.ndarray:
    """The least spread a window of ``window`` rows can have, so a short baseline is not a hair trigger.

    A class share is a proportion of ``window`` rows, and the baseline's share is itself an
    estimate from ``windows`` such windows: the floor is the two-proportion standard error
    with the pooled share, kept at least one row away from 0 and 1 (a class never seen still
    needs a few rows to count as drift). Measured by simulation with the sample classifier's
    class mix, 5-window baselines of 20 rows: false alarms over 10 windows (2 in a row) fell
    from 15% with the plain binomial error of the baseline share to 1.5%. Other statistics: a
    millionth of their scale, so a constant output only breaches when it really changes.
    """
    if statistic == "class_histogram":
        pooled = (windows * mean + value) / (windows + 1)
        p = np.clip(pooled, 1.0 / window, 1.0 - 1.0 / window)
        return np.sqrt(p * (1.0 - p) * (1.0 / window + 1.0 / (window * max(1, windows))))
    return 1e-6 * np.maximum(1.0, np.abs(mean))


@dataclass(frozen=True)
class Deviation:
    component: int  # class index for class_histogram, else 0
    value: float
    mean: float
    sigma: float
    z: float


def worst_deviation(statistic: str, value: np.ndarray, baseline: Baseline, window: int) -> Deviation:
    """The component furthest from the baseline, in standard deviations of a new window.

    A new window varies by the baseline's spread plus the uncertainty of the baseline's own
    mean: sigma x sqrt(1 + 1/windows), never less than the floor.
    """
    mean = np.array(baseline.mean)
    if len(value) != len(mean):
        raise ValueError(f"the statistic has {len(value)} values, the baseline {len(mean)}")
    spread = baseline.sigma() * np.sqrt(1.0 + 1.0 / max(1, baseline.windows))
    sigma = np.maximum(spread, sigma_floor(statistic, mean, value, window, baseline.windows))
    z = np.abs(value - mean) / sigma
    worst = int(np.argmax(z))
    return Deviation(worst, float(value[worst]), float(mean[worst]), float(sigma[worst]),
                     float(z[worst]) if math.isfinite(z[worst]) else math.inf)


@dataclass(frozen=True)
class DriftWindow:
    """One closed window of the served version's production outputs, and what to judge it against."""

    statistic: str
    value: np.ndarray
    samples: int
    baseline: Baseline | None  # None: no usable baseline yet (``why`` says)
    reference: int | None = None  # the version the baseline belongs to
    own: bool = False  # the served version's own baseline: drift of the inputs, not of a version
    why: str = ""
    model: str = ""  # whose outputs, for the finding's words: the model, the version that answered, the route
    served: int | None = None
    route: str = ""  # the ensemble clients called ("" when they call the model itself)

    @property
    def source(self) -> str:
        """``detector v2 through detection``; "" when the window does not say."""
        if not self.model:
            return ""
        who = f"{self.model} v{self.served}" if self.served is not None else self.model
        return f"{who} through {self.route}" if self.route else who
