"""Golden probes: one slice of the golden set per check, sent the way clients send (no version).

The answer comes from whatever clients get: the model itself, or the ensemble clients call
(``core/ensemble.py``), whose step follows the served version. The last verified version stays
resident (promote keeps it loaded), so its outputs on the same golden samples are the baseline for
divergence and score, queried once per switch by explicit version (through the ensemble's steps run
from here, for a routed model).

A classifier's probes are judged on logits (top-1 agreement, accuracy); a detector's (a golden set
with boxes) on detections: IoU-matched agreement with the baseline and mAP over a full pass.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from orchestrator.core.detection import Boxes, agreement, decode, mean_average_precision
from orchestrator.core.ensemble import Ensemble
from orchestrator.core.golden import GoldenSet
from orchestrator.errors import TritonError, TritonUnreachable
from orchestrator.triton.golden import run_golden
from orchestrator.triton.protocol import OWN_REQUEST, TritonAPI, TritonState
from orchestrator.triton.route import run_route

log = logging.getLogger(__name__)

BASELINE_BATCH = 8


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


@dataclass
class DetectionPass:
    """A detector's detections over one full pass of the golden set."""

    frames: dict[int, Boxes] = field(default_factory=dict)

    def add(self, indices: range, detections: list[Boxes]) -> None:
        self.frames.update(zip(indices, detections, strict=True))

    def map_if_complete(self, truths: tuple[Boxes, ...], metric: str) -> float | None:
        if len(self.frames) < len(truths):
            return None
        report = mean_average_precision([self.frames[i] for i in range(len(truths))], truths)
        self.frames.clear()
        return float(getattr(report, metric))


class GoldenProbe:
    """The probing state of one model: where in the golden set, the window, the baseline's answers.

    ``on_latency(seconds)`` and ``on_divergence(output, value)`` report to the metrics. ``route``: the
    ensemble clients call, probed instead of the model; ``map_metric``: the mAP a detector's pass reports.
    """

    def __init__(self, model: str, golden: GoldenSet, outputs: list[str], batch: int, window: int,
                 on_latency: Callable[[float], None], on_divergence: Callable[[str, float], None],
                 route: Ensemble | None = None, map_metric: str = "map50_95") -> None:
        self.model, self.golden, self.outputs, self.batch = model, golden, outputs, batch
        self.route, self.map_metric = route, map_metric
        self.target = route.name if route is not None else model
        self.window_size = window
        self.on_latency, self.on_divergence = on_latency, on_divergence
        self.cursor = 0
        self.pass_tracker = PassTracker()
        self.detection_pass = DetectionPass()
        self.window: deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = deque(maxlen=window)
        self.detection_window: deque[tuple[Boxes, Boxes]] = deque(maxlen=window)
        self.baseline_outputs: dict[str, np.ndarray] | None = None
        self.baseline_detections: list[Boxes] | None = None
        self.baseline_accuracy: float | None = None
        self.baseline_map: float | None = None
        self.settled = route is None  # a route's answers are the served version's once Triton routes there
        # Verified versions' answers on the golden set, by version: a version's files never change, and through
        # an ensemble they cost a pass of every step (about a second of device time for the sample detector).
        self.answers: dict[int, dict[str, np.ndarray]] = {}

    def reset(self, triton: TritonAPI, fallback: int | None) -> None:
        """A switch: forget the window, and ask ``fallback`` (resident, verified) for the baseline answers."""
        self.pass_tracker, self.detection_pass = PassTracker(), DetectionPass()
        self.window = deque(maxlen=self.window_size)
        self.detection_window = deque(maxlen=self.window_size)
        self.baseline_outputs, self.baseline_detections = None, None
        self.baseline_accuracy, self.baseline_map = None, None
        self.settled = self.route is None
        if fallback is None:
            return
        try:
            outputs = self._baseline(triton, fallback)
            detections = decode(outputs) if self.golden.truths is not None else None
        except TritonError as exc:
            log.warning("%s: no baseline from v%s: %s", self.model, fallback, exc)
            return
        except ValueError as exc:
            log.warning("%s: v%s's answers are not detections: %s", self.model, fallback, exc)
            return
        self.baseline_outputs = outputs
        if self.golden.labels is not None:
            logits = outputs[self.outputs[0]]
            self.baseline_accuracy = float((logits.argmax(1) == self.golden.labels).mean())
        if detections is not None and self.golden.truths is not None:
            self.baseline_detections = detections
            self.baseline_map = float(getattr(mean_average_precision(detections, self.golden.truths),
                                              self.map_metric))

    def _baseline(self, triton: TritonAPI, fallback: int) -> dict[str, np.ndarray]:
        if fallback in self.answers:
            return self.answers[fallback]
        if self.route is None:
            outputs = run_golden(triton, self.model, fallback, self.golden, self.outputs, BASELINE_BATCH)
        else:
            parts = [run_route(triton, self.route, self.model, fallback, batch, self.outputs)
                     for batch in self.golden.batches(BASELINE_BATCH)]
            outputs = {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}
        self.answers[fallback] = outputs
        return outputs

    def _routes_to(self, triton: TritonAPI, served: int) -> bool:
        """Whether Triton's default routing, the one the ensemble's step follows, reaches ``served`` now."""
        ready = [v for v, e in triton.states(self.model).items() if e.state is TritonState.READY]
        return bool(ready) and max(ready) == served

    def probe(self, triton: TritonAPI, served: int | None) -> dict[str, object]:
        """The Observation fields this probe fills; ``unreachable`` when the server itself is gone."""
        start = self.cursor % self.golden.size
        indices = range(start, min(start + self.batch, self.golden.size))
        batch = {name: array[indices.start:indices.stop] for name, array in self.golden.inputs.items()}
        started = time.monotonic()
        try:
            if not self.settled and served is not None:
                # The ensemble answers with its own version: wait until Triton routes to the served one.
                self.settled = self._routes_to(triton, served)
                if not self.settled:
                    return {"probe_ok": True}
            self.cursor = indices.stop % self.golden.size
            result = triton.infer(self.target, batch, self.outputs, request_id=OWN_REQUEST)
        except TritonUnreachable as exc:
            if not triton.is_live():
                return {"unreachable": True}
            # The server answers but this model does not: a hung or crashed backend.
            return {"probe_ok": False, "probe_error": str(exc)}
        except TritonError as exc:
            return {"probe_ok": False, "probe_error": str(exc)}
        self.on_latency(time.monotonic() - started)
        if self.route is None and result.version != served:
            return {"probe_ok": True}  # mid-switch: Triton and disk disagree for a moment
        if self.golden.truths is not None:
            return self._judge_detections(indices, result.outputs)
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

    def _judge_detections(self, indices: range, outputs: dict[str, np.ndarray]) -> dict[str, object]:
        observed: dict[str, object] = {"probe_ok": True, "outputs": outputs, "zeros_ok": True}
        try:
            detections = decode(outputs)
        except ValueError as exc:
            return {"probe_ok": False, "probe_error": f"{self.target} answers no detections: {exc}"}
        if self.baseline_detections is not None:
            for index, frame in zip(indices, detections, strict=True):
                self.detection_window.append((frame, self.baseline_detections[index]))
            served = tuple(a for a, _ in self.detection_window)
            base = tuple(b for _, b in self.detection_window)
            observed["detections"], observed["baseline_detections"] = served, base
            self.on_divergence("detections", 1.0 - agreement(served, base).matched_share)
        assert self.golden.truths is not None
        self.detection_pass.add(indices, detections)
        value = self.detection_pass.map_if_complete(self.golden.truths, self.map_metric)
        if value is not None:
            observed["golden_map"], observed["baseline_map"] = value, self.baseline_map
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
