"""Parsing Triton trace files (the layout measured on Triton 2.51) and the state's liveness view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store.shadow_state import ShadowConfig, ShadowState, observed
from orchestrator.triton.traces import Taken, TraceTail, UnsupportedTrace, model_of, parse_trace, trace_files


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
    rebooted = observed(state, now=50.0)  # a heartbeat from a boot before this one
    assert rebooted.phase == "failed" and "before this machine started" in rebooted.reason


def test_tail_takes_its_models_files_once_and_leaves_others(tmp_path: Path) -> None:
    (tmp_path / "trace.json.1").write_text(json.dumps(trace()))
    (tmp_path / "trace.json.2").write_text(json.dumps(trace("other")))
    (tmp_path / "trace.json.3").write_text(json.dumps(trace(dtype="BYTES")))
    (tmp_path / "trace.json.4").write_text(json.dumps(trace()[:3]))  # traced without TENSORS
    tail = TraceTail(tmp_path, "trace.json", "classifier", inputs=False)
    taken = [tail.take(path) for path in tail.files()]
    assert [t for t, _ in taken] == [Taken.SAMPLES, Taken.FOREIGN, Taken.SAMPLES, Taken.DROPPED]
    # Outputs only: inputs are not parsed, so text inputs do not stop a drift sampler.
    assert all(s.inputs == {} and s.outputs["LOGITS"].tolist() == [[0.25, 0.75]] for _, [s] in taken[::2])
    assert [p.name for p in trace_files(tmp_path, "trace.json")] == ["trace.json.2"]  # ours read and deleted
    assert tail.files() == []  # the other model's file is not read again


def test_tail_waits_for_a_file_still_being_written_then_gives_up(tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    path = tmp_path / "trace.json.1"
    path.write_text(json.dumps(trace())[:60])
    tail = TraceTail(tmp_path, "trace.json", "classifier")
    assert tail.take(path) == (Taken.PARTIAL, []) and path.exists()
    os.utime(path, (1.0, 1.0))  # long untouched: never going to be completed
    assert tail.take(path) == (Taken.DROPPED, []) and not path.exists()
    assert tail.take(path) == (Taken.GONE, [])


def test_remove_all_deletes_only_this_models_files(tmp_path: Path) -> None:
    (tmp_path / "trace.json.1").write_text(json.dumps(trace()))
    (tmp_path / "trace.json.2").write_text(json.dumps(trace("other")))
    assert TraceTail(tmp_path, "trace.json", "classifier").remove_all() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json.2"]
