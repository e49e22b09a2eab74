"""Golden probes: one slice of the golden set per check, sent the way clients send (no version).

The answer comes from whatever clients get. The last verified version stays resident (promote
keeps it loaded), so its outputs on the same golden samples are the baseline for divergence and
score, queried once per switch by explicit version.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from orchestrator.core.golden import GoldenSet
from orchestrator.errors import TritonError, TritonUnreachable
from orchestrator.triton.golden import run_golden
from orchestrator.triton.protocol import TritonAPI

log = logging.getLogger(__name__)


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


class GoldenProbe:
    """The probing state of one model: where in the golden set, the window, the baseline's answers.

    ``on_latency(seconds)`` and ``on_divergence(output, mean_abs)`` report to the metrics.
    """

    def __init__(self, model: str, golden: GoldenSet, outputs: list[str], batch: int, window: int,
                 on_latency: Callable[[float], None], on_divergence: Callable[[str, float], None]) -> None:
        self.model, self.golden, self.outputs, self.batch = model, golden, outputs, batch
        self.window_size = window
        self.on_latency, self.on_divergence = on_latency, on_divergence
        self.cursor = 0
        self.pass_tracker = PassTracker()
        self.window: deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = deque(maxlen=window)
        self.baseline_outputs: dict[str, np.ndarray] | None = None
        self.baseline_accuracy: float | None = None

    def reset(self, triton: TritonAPI, fallback: int | None) -> None:
        """A switch: forget the window, and ask ``fallback`` (resident, verified) for the baseline answers."""
        self.pass_tracker = PassTracker()
        self.window = deque(maxlen=self.window_size)
        self.baseline_outputs, self.baseline_accuracy = None, None
        if fallback is None:
            return
        try:
            outputs = run_golden(triton, self.model, fallback, self.golden, self.outputs, 8)
        except TritonError as exc:
            log.warning("%s: no baseline from v%s: %s", self.model, fallback, exc)
            return
        self.baseline_outputs = outputs
        if self.golden.labels is not None:
            logits = outputs[self.outputs[0]]
            self.baseline_accuracy = float((logits.argmax(1) == self.golden.labels).mean())

    def probe(self, triton: TritonAPI, served: int | None) -> dict[str, object]:
        """The Observation fields this probe fills; ``unreachable`` when the server itself is gone."""
        start = self.cursor % self.golden.size
        indices = range(start, min(start + self.batch, self.golden.size))
        self.cursor = indices.stop % self.golden.size
        batch = {name: array[indices.start:indices.stop] for name, array in self.golden.inputs.items()}
        started = time.monotonic()
        try:
            result = triton.infer(self.model, batch, self.outputs)
        except TritonUnreachable as exc:
            if not triton.is_live():
                return {"unreachable": True}
            # The server answers but this model does not: a hung or crashed backend.
            return {"probe_ok": False, "probe_error": str(exc)}
        except TritonError as exc:
            return {"probe_ok": False, "probe_error": str(exc)}
        self.on_latency(time.monotonic() - started)
        if result.version != served:
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
                self.on_divergence(name, mean_abs)
        return served, base
