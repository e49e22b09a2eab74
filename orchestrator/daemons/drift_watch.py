"""Drift on what clients really got: the production sampler's outputs, cut into windows.

Each version records a baseline of its own once it serves verified and healthy
(``drift_baseline.json``, journaled when complete); until then it is judged against the last
verified version's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from orchestrator.core.drift import Baseline, DriftWindow, WindowAccumulator, row_features
from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.core.model import Contract
from orchestrator.core.policy import Drift
from orchestrator.daemons.sampler import ProductionSampler
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.baselines import read_drift_baselines, write_drift_baselines
from orchestrator.store.policyfile import POLICY_FILE
from orchestrator.store.replay import tracing_ring
from orchestrator.store.repository import ModelStore
from orchestrator.triton.protocol import TritonAPI

log = logging.getLogger(__name__)


def drift_rule(rules: dict[str, object], store: ModelStore, contract: Contract) -> tuple[Drift, str, int] | None:
    """The drift rule when it samples, with its output and row size; RepositoryCorrupt when it cannot apply."""
    rule = rules.get("drift")
    if not isinstance(rule, Drift) or not rule.sampling:
        return None
    outputs = [t.name for t in contract.outputs]
    output = rule.output_of(outputs)
    spec = next((t for t in contract.outputs if t.name == output), None)
    where = f"{store.state / POLICY_FILE} watch: rule drift"
    if spec is None:
        raise RepositoryCorrupt(f"{where}: {output!r} is not an output of {store.name} ({', '.join(outputs)})")
    row_size = math.prod(spec.dims) if spec.dims and all(d > 0 for d in spec.dims) else 0
    if rule.statistic == "class_histogram" and row_size < 2:
        raise RepositoryCorrupt(f"{where}: class_histogram needs an output of fixed shape with 2 or more "
                                f"classes; {spec.describe()} is not (use detection_count or mean)")
    return rule, output, row_size


class DriftWatch:
    def __init__(self, store: ModelStore, rule: Drift, output: str, row_size: int, outputs: list[str], batched: bool,
                 triton: TritonAPI, trace_dir: Path | None, clock: Callable[[], float],
                 on_samples: Callable[[int], None], actor: str) -> None:
        self.store, self.rule, self.output, self.row_size = store, rule, output, row_size
        self.batched = batched  # traced outputs then carry the batch dimension
        self.on_samples, self.actor = on_samples, actor
        self.sampler = ProductionSampler(triton, store, rule.samples_per_s, trace_dir, clock, ring=tracing_ring(store))
        self.key = rule.baseline_key(outputs)
        self.baselines = read_drift_baselines(store.state)
        self.accumulator = WindowAccumulator(rule.statistic, rule.window, row_size)
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
                output = sample.outputs.get(self.output)
                if sample.version != served or output is None:
                    continue  # the previous version, answering during a switch
                rows = max(1, output.shape[0]) if self.batched and output.ndim > 1 else 1
                try:
                    features = row_features(self.rule.statistic, output, self.row_size or output.size // rows,
                                            self.rule.threshold)
                except ValueError as exc:  # not the configured shape: nothing to count
                    log.warning("%s: traced output skipped: %s", self.store.name, exc)
                    continue
                self.accumulator.add(features)
                self.on_samples(len(features))
        value = self.accumulator.pop()
        if value is None:
            pending = self.sampler.reason or f"{self.accumulator.pending} of {self.rule.window} production outputs"
            return {"drift_pending": pending}
        return {"drift": self._judged_against(value, served)}

    def _judged_against(self, value: np.ndarray, served: int) -> DriftWindow:
        """A version is judged against its own baseline once it has one, else the last verified version's."""
        needed = self.rule.baseline_windows
        window = DriftWindow(self.rule.statistic, value, self.rule.window, None)
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
