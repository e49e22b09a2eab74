"""Drift of the sample detector wired as the watcher runs it, without a server: the ensemble clients call is
traced, its files are read nested, each frame is the detector step's version's, and shadow's tracing is handed
back on the ensemble. Triton is a stand-in that only answers trace settings; the trace files are written here in
the layout measured on Triton 2.51 (``tests/unit/test_shadow_traces.py``)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.daemons.drift_watch import DriftWatch, drift_rule
from orchestrator.daemons.sampler import ProductionSampler
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.baselines import drift_progress
from orchestrator.store.repository import ModelRepository, ModelStore
from orchestrator.store.shadow_state import ShadowConfig, ShadowState, write_state
from orchestrator.triton.traces import TRACING_OFF, shadow_tracing

ROOT = Path(__file__).resolve().parents[3]
ENTRIES = ("detection", "detector", "detector_pre", "detector_nms")
K = 32  # boxes per frame in the ensemble's padded outputs
DRIFT = {"statistic": "detections", "window": 4, "baseline_windows": 2, "samples_per_s": 10}


class Tracing:
    """The part of Triton the sampler talks to: where trace files go, and the settings it was told."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.updates: list[tuple[str, dict[str, object]]] = []

    def trace_settings(self, model: str | None = None) -> dict[str, object]:
        return {"trace_file": str(self.folder / "trace.json")}

    def update_trace_settings(self, model: str, settings: dict[str, object]) -> None:
        self.updates.append((model, settings))


def _detector(tmp: Path, drift: dict[str, Any] | None = None) -> ModelStore:
    repository, state = tmp / "model_repository", tmp / "orchestrator_state"
    for entry in ENTRIES:
        shutil.copytree(ROOT / "model_repository" / entry, repository / entry)
    shutil.copytree(ROOT / "orchestrator_state" / "detector", state / "detector")
    policy = yaml.safe_load((state / "detector" / "policy.yaml").read_text())
    policy["watch"] = {"rules": {"drift": {**DRIFT, **(drift or {})}}}
    (state / "detector" / "policy.yaml").write_text(yaml.safe_dump(policy))
    return ModelRepository(repository, state).model("detector")


def _tensor(name: str, values: np.ndarray, dtype: str) -> dict[str, object]:
    return {"id": 1, "activity": "TENSOR_BACKEND_OUTPUT",
            "tensor": {"name": name, "data": ",".join(f"{v:g}" for v in values.ravel().tolist()),
                       "shape": ",".join(str(d) for d in values.shape), "dtype": dtype}}


def ensemble_trace(version: int, frames: list[list[tuple[int, float]]]) -> bytes:
    """One traced request of ``detection``: the steps' entries first (the detector's names ``version``), then the
    ensemble's own with its final outputs; ``frames``: (class, score) of each frame's boxes."""
    boxes, scores = np.zeros((len(frames), K, 4)), np.zeros((len(frames), K))
    classes, count = np.zeros((len(frames), K), np.int64), np.zeros((len(frames), 1), np.int64)
    for index, found in enumerate(frames):
        count[index] = len(found)
        for row, (cls, score) in enumerate(found):
            boxes[index, row], classes[index, row], scores[index, row] = [2, 2, 9, 9], cls, score
    entries = [
        {"id": 3, "model_name": "detector_nms", "model_version": 1, "parent_id": 1},
        {"id": 2, "model_name": "detector", "model_version": version, "parent_id": 1},
        {"id": 4, "model_name": "detector_pre", "model_version": 1, "parent_id": 1},
        {"id": 1, "model_name": "detection", "model_version": 1},
        {"id": 1, "activity": "TENSOR_QUEUE_INPUT",
         "tensor": {"name": "IMAGE", "data": "0", "shape": "1", "dtype": "FP32"}},
        _tensor("BOXES", boxes, "FP32"), _tensor("SCORES", scores, "FP32"), _tensor("CLASSES", classes, "INT32"),
        _tensor("COUNT", count, "INT32"),
    ]
    return json.dumps(entries).encode()


def test_the_detector_is_sampled_through_its_ensemble_and_each_frame_is_its_steps_version(tmp_path: Path) -> None:
    store = _detector(tmp_path)
    snap = store.snapshot()
    setup = drift_rule(snap.policies.watch.rules, store, snap)
    assert setup is not None and setup.route == "detection" and setup.batched
    assert setup.rule.classes == 4  # the golden set's truth names classes 0..3
    traces = tmp_path / "traces"
    traces.mkdir()
    triton = Tracing(traces)
    sampled: list[int] = []
    watch = DriftWatch(store, setup, triton, None, clock=lambda: 0.0, on_samples=sampled.append, actor="watch")
    (traces / "trace.json.1").write_bytes(ensemble_trace(1, [[(0, 0.9), (2, 0.8)], [(1, 0.7)]]))
    (traces / "trace.json.2").write_bytes(ensemble_trace(2, [[(3, 0.9)] * 5]))  # v2, during a switch: not v1's
    (traces / "trace.json.3").write_bytes(ensemble_trace(1, [[(3, 0.95), (7, 0.9), (0, 0.2)], []]))
    found = watch.window(0.0, served=1, every_s=1.0, requests_per_s=None)
    window = found["drift"]
    # 4 frames of v1: 2, 1, 2 (0.2 is below the threshold) and 0 boxes; classes 0, 2, 1, 3 and 7 ("other").
    assert window.value.tolist() == pytest.approx([5 / 4, 1 / 4, 1 / 4, 1 / 4, 1 / 4, 1 / 4])
    assert (window.model, window.served, window.route, window.baseline) == ("detector", 1, "detection", None)
    assert "recording v1's drift baseline: 0 of 2 windows" in window.why
    assert sampled == [2, 2] and list(traces.iterdir()) == []  # read and deleted, v2's file too
    assert [model for model, _ in triton.updates] == ["detection"]  # the route clients call is traced
    assert watch.window(0.0, served=1, every_s=1.0, requests_per_s=None) == {"drift_pending": "0 of 4 frames"}
    watch.learn(window, 1)
    assert drift_progress(store.snapshot()) == {1: "1/2"}  # status reads the key the watcher wrote
    watch.close()
    assert triton.updates[-1] == ("detection", TRACING_OFF)


def test_while_shadow_runs_through_the_ensemble_the_sampler_hands_its_tracing_back_there(tmp_path: Path) -> None:
    store = _detector(tmp_path)
    triton = Tracing(tmp_path)
    config = ShadowConfig("detector", 2, "http://triton", str(tmp_path), sample_rate=0.01, route="detection")
    write_state(store.state, ShadowState(config, "running", "now", pid=os.getpid(), heartbeat=time.monotonic()))
    sampler = ProductionSampler(triton, store, 2.0, traced="detection")  # type: ignore[arg-type]
    assert sampler.poll(None) == []
    assert triton.updates == [("detection", shadow_tracing(0.01))]  # the worker's settings, on what it traces
    assert sampler.standing_aside and "shadow run of v2" in sampler.reason
    sampler.close()
    assert len(triton.updates) == 1  # standing aside: the shadow's tracing is left alone


@pytest.mark.parametrize(("drift", "change", "message"), [
    ({"output": "BOXES"}, None, "detections reads a detector's BOXES, SCORES, CLASSES, COUNT \\(leave output empty\\)"),
    ({}, "second route", "detector serves through several ensembles \\(detection, detection_hd\\)"),
    ({}, "no truth", "detections needs classes: set it, or put truth.npy in the golden set"),
    ({"statistic": "class_histogram", "output": "RAW"}, None, "'RAW' is not an output of detection"),
])
def test_a_detections_rule_that_cannot_apply_is_refused_naming_the_policy(tmp_path: Path, drift: dict[str, Any],
                                                                         change: str | None, message: str) -> None:
    store = _detector(tmp_path, drift)
    if change == "second route":
        shutil.copytree(store.folder.parent / "detection", store.folder.parent / "detection_hd")
    elif change == "no truth":
        (store.state / "golden" / "truth.npy").unlink()
    snap = store.snapshot()
    with pytest.raises(RepositoryCorrupt, match=message) as refused:
        drift_rule(snap.policies.watch.rules, store, snap)
    assert "policy.yaml watch: rule drift" in str(refused.value)


def test_classes_set_in_the_policy_need_no_truth(tmp_path: Path) -> None:
    store = _detector(tmp_path, {"classes": 6})
    (store.state / "golden" / "truth.npy").unlink()
    snap = store.snapshot()
    setup = drift_rule(snap.policies.watch.rules, store, snap)
    assert setup is not None and setup.rule.classes == 6
    assert setup.rule.baseline_key(setup.outputs) == "detections:BOXES:4:0.5:6"
