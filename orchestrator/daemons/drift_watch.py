"""Drift on what clients really got: the production sampler's outputs, cut into windows.

What clients call is sampled: the model, or the ensemble it serves through (its route), whose
outputs are the final ones (a detector's decoded boxes after NMS) and whose trace names the
version of the model's step that answered. Each version records a baseline of its own once it
serves verified and healthy (``drift_baseline.json``, journaled when complete); until then it is
judged against the last verified version's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from orchestrator.core.detection_drift import detections_of, frame_rows
from orchestrator.core.drift import Baseline, DriftWindow, WindowAccumulator, row_features
from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.core.policy import DETECTIONS, Drift
from orchestrator.core.shadow_stats import DETECTION_TENSORS, is_detection
from orchestrator.daemons.sampler import ProductionSampler
from orchestrator.errors import PolicyViolation, RepositoryCorrupt
from orchestrator.store.baselines import drift_classes, read_drift_baselines, write_drift_baselines
from orchestrator.store.policyfile import POLICY_FILE
from orchestrator.store.replay import tracing_ring
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import TritonAPI
from orchestrator.triton.traces import TraceSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSetup:
    """What the drift rule samples and how its rows are read, settled once when the watcher starts."""

    rule: Drift  # ``classes`` filled in for detections
    output: str  # the output judged (detections: all four of DETECTION_TENSORS)
    row_size: int  # elements per row of it; 0 when its shape varies
    outputs: list[str]  # every output of what is traced
    batched: bool  # traced outputs carry the batch dimension
    route: str = ""  # the ensemble traced ("" when clients call the model itself)


def drift_rule(rules: dict[str, object], store: ModelStore, snap: ModelSnapshot) -> DriftSetup | None:
    """The drift rule when it samples, on what clients call; RepositoryCorrupt when it cannot apply."""
    rule = rules.get("drift")
    if not isinstance(rule, Drift) or not rule.sampling:
        return None
    where = f"{store.state / POLICY_FILE} watch: rule drift"
    try:
        route = snap.route
    except PolicyViolation as exc:  # which ensemble clients call cannot be told: nothing to sample
        raise RepositoryCorrupt(f"{where}: {exc}") from exc
    contract, name = (route.contract, route.name) if route is not None else (snap.client_contract, store.name)
    batched = (route.max_batch_size if route is not None else snap.config.max_batch_size) > 0
    outputs = [t.name for t in contract.outputs]
    if rule.statistic == DETECTIONS:
        if rule.output or not is_detection(dict.fromkeys(outputs)):
            raise RepositoryCorrupt(f"{where}: detections reads a detector's {', '.join(DETECTION_TENSORS)} "
                                    f"(leave output empty); {name} answers {', '.join(outputs)}")
        classes = drift_classes(rule, snap)
        if not classes:
            raise RepositoryCorrupt(f"{where}: detections needs classes: set it, or put truth.npy in the golden set")
        return DriftSetup(replace(rule, classes=classes), outputs[0], 0, outputs, batched, route.name if route else "")
    output = rule.output_of(outputs)
    spec = next((t for t in contract.outputs if t.name == output), None)
    if spec is None:
        raise RepositoryCorrupt(f"{where}: {output!r} is not an output of {name} ({', '.join(outputs)})")
    row_size = math.prod(spec.dims) if spec.dims and all(d > 0 for d in spec.dims) else 0
    if rule.statistic == "class_histogram" and row_size < 2:
        raise RepositoryCorrupt(f"{where}: class_histogram needs an output of fixed shape with 2 or more "
                                f"classes; {spec.describe()} is not (use detection_count or mean)")
    return DriftSetup(rule, output, row_size, outputs, batched, route.name if route else "")


class DriftWatch:
    def __init__(self, store: ModelStore, setup: DriftSetup, triton: TritonAPI, trace_dir: Path | None,
                 clock: Callable[[], float], on_samples: Callable[[int], None], actor: str) -> None:
        self.store, self.setup = store, setup
        self.rule, self.output, self.row_size = setup.rule, setup.output, setup.row_size
        self.on_samples, self.actor = on_samples, actor
        self.sampler = ProductionSampler(triton, store, self.rule.samples_per_s, trace_dir, clock,
                                         ring=tracing_ring(store), traced=setup.route or None)
        self.key = self.rule.baseline_key(setup.outputs)
        self.baselines = read_drift_baselines(store.state)
        self.accumulator = WindowAccumulator(self.rule.statistic, self.rule.window, self.row_size)
        self.reference: int | None = None
        self.last_sampled_at = -math.inf

    def reset(self, reference: int | None) -> None:
        # Outputs of the previous version, sampled before the switch, belong to no window of this one.
        self.accumulator = WindowAccumulator(self.rule.statistic, self.rule.window, self.row_size)
        self.reference = reference

    def window(self, now: float, served: int, every_s: float, requests_per_s: float | None) -> dict[str, object]:
        """The Observation fields: the next closed window with its baseline, or why none closed."""
        if now - self.last_sampled_at >= every_s:
            self.last_sampled_at = now
            for sample in self.sampler.poll(requests_per_s):
                if self._answered_by(sample) != served:
                    continue  # the previous version, answering during a switch
                try:
                    features = self._features(sample)
                except ValueError as exc:  # not the configured shape: nothing to count
                    log.warning("%s: traced output skipped: %s", self.store.name, exc)
                    continue
                if features is None:
                    continue
                self.accumulator.add(features)
                self.on_samples(len(features))
        value = self.accumulator.pop()
        if value is None:
            what = "frames" if self.rule.statistic == DETECTIONS else "production outputs"
            pending = self.sampler.reason or f"{self.accumulator.pending} of {self.rule.window} {what}"
            return {"drift_pending": pending}
        return {"drift": self._judged_against(value, served)}

    def _answered_by(self, sample: TraceSample) -> int | None:
        """The version of the model that answered: through a route, its step's entry in the trace."""
        return sample.steps.get(self.store.name) if self.setup.route else sample.version

    def _features(self, sample: TraceSample) -> np.ndarray | None:
        """The sample's rows (a number each, or a detector's frame row each); None without the judged output."""
        if self.rule.statistic == DETECTIONS:
            if not is_detection(sample.outputs):
                return None
            return frame_rows(detections_of(sample.outputs), self.rule.classes, self.rule.threshold)
        output = sample.outputs.get(self.output)
        if output is None:
            return None
        rows = max(1, output.shape[0]) if self.setup.batched and output.ndim > 1 else 1
        return row_features(self.rule.statistic, output, self.row_size or output.size // rows, self.rule.threshold)

    def _judged_against(self, value: np.ndarray, served: int) -> DriftWindow:
        """A version is judged against its own baseline once it has one, else the last verified version's."""
        needed = self.rule.baseline_windows
        window = DriftWindow(self.rule.statistic, value, self.rule.window, None, model=self.store.name,
                             served=served, route=self.setup.route)
        own = self._baseline(served)
        if own is not None and own.windows >= needed:
            return replace(window, baseline=own, reference=served, own=True)
        ref = self._baseline(self.reference) if self.reference is not None else None
        if ref is not None and ref.windows >= needed and len(ref.mean) == len(value):
            return replace(window, baseline=ref, reference=self.reference)
        progress = f"recording v{served}'s drift baseline: {own.windows if own else 0} of {needed} windows"
        if self.reference is not None:
            progress += f"; v{self.reference} has no complete baseline"
        return replace(window, why=progress)

    def _baseline(self, version: int | None) -> Baseline | None:
        baseline = self.baselines.get(str(version))
        return baseline if baseline is not None and baseline.key == self.key else None

    def learn(self, window: DriftWindow, served: int) -> None:
        """A healthy window of a verified version goes into its baseline until the baseline is complete.

        The caller decides "healthy and verified"; a window judged against its own baseline is not learnt.
        """
        if window.own:
            return
        baseline = (self._baseline(served) or Baseline(self.key)).add(window.value)
        self.baselines[str(served)] = baseline
        write_drift_baselines(self.store.state, self.baselines, self.store.versions())
        if baseline.windows == self.rule.baseline_windows:
            self.store.journal.append(Record(
                action=Action.BASELINE, result=Result.SUCCEEDED, op=new_op_id(), actor=self.actor,
                to_version=served, reason=f"drift baseline of v{served} recorded over {baseline.windows} windows",
                details={"rule": "drift", "key": baseline.key, "windows": baseline.windows,
                         "mean": [round(m, 6) for m in baseline.mean],
                         "sigma": [round(float(v), 6) for v in baseline.sigma()]}))
            log.warning("%s: v%s drift baseline recorded (%s)", self.store.name, served, baseline.key)

    def close(self) -> None:
        self.sampler.close()
