"""Parsing Triton trace files (the layout measured on Triton 2.51) and the state's liveness view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.shadow.state import ShadowConfig, ShadowState, observed
from orchestrator.shadow.traces import UnsupportedTrace, model_of, parse_trace, trace_files


def trace(model: str = "classifier", dtype: str = "FP32") -> list[dict[str, object]]:
    stamp = lambda name, ns: {"id": 7, "timestamps": [{"name": name, "ns": ns}]}  # noqa: E731
    return [stamp("HTTP_RECV_START", 1), {"id": 7, "model_name": model, "model_version": 1},
            stamp("REQUEST_START", 1_000_000),
            {"id": 7, "activity": "TENSOR_QUEUE_INPUT",
             "tensor": {"name": "IMAGE", "data": "1.5,2,-3,4", "shape": "1,2,2", "dtype": dtype}},
            {"id": 7, "activity": "TENSOR_BACKEND_OUTPUT",
             "tensor": {"name": "LOGITS", "data": "0.25,0.75", "shape": "1,2", "dtype": "FP32"}},
            stamp("REQUEST_END", 3_500_000)]


def test_a_trace_becomes_inputs_outputs_and_served_latency() -> None:
    [sample] = parse_trace(json.dumps(trace()), "classifier")
    assert sample.inputs["IMAGE"].dtype == np.float32 and sample.inputs["IMAGE"].shape == (1, 2, 2)
    assert sample.inputs["IMAGE"].ravel().tolist() == [1.5, 2, -3, 4]
    assert sample.outputs["LOGITS"].tolist() == [[0.25, 0.75]] and sample.served_ms == 2.5 and sample.version == 1


def test_other_models_traces_are_not_ours() -> None:
    text = json.dumps(trace("other"))
    assert parse_trace(text, "classifier") == [] and model_of(text.encode()[:2048]) == "other"


def test_bytes_tensors_are_unsupported() -> None:
    with pytest.raises(UnsupportedTrace):
        parse_trace(json.dumps(trace(dtype="BYTES")), "classifier")


def test_files_in_write_order(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        (tmp_path / f"trace.json.{n}").write_text("[]")
    (tmp_path / "trace.json.tmp").write_text("[]")
    assert [p.name for p in trace_files(tmp_path, "trace.json")] == ["trace.json.1", "trace.json.2", "trace.json.10"]


def test_a_silent_or_dead_worker_reads_as_failed() -> None:
    state = ShadowState(ShadowConfig("m", 2, "http://x", "/t"), "running", "now", pid=None, heartbeat=100.0)
    assert observed(state, now=105.0).phase == "running"
    assert observed(state, now=200.0).phase == "failed"
    dead = ShadowState(state.config, "running", "now", pid=2**22 + 12345, heartbeat=100.0)
    assert observed(dead, now=101.0).phase == "failed"
