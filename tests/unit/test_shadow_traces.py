"""Parsing Triton trace files (the layout measured on Triton 2.51) and the state's liveness view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.daemons.folder_watch import FolderWatch
from orchestrator.store.shadow_state import ShadowConfig, ShadowState, observed
from orchestrator.triton.protocol import OWN_REQUEST
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


@pytest.mark.parametrize(("request_id", "kept"), [(OWN_REQUEST, 0), ("client-42", 1), (None, 1)])
def test_the_orchestrators_own_requests_are_left_out(request_id: str | None, kept: int) -> None:
    entries = trace()
    if request_id is not None:
        entries[1] = {**entries[1], "request_id": request_id}  # where 2.51 writes it: the model's entry
    assert len(parse_trace(json.dumps(entries), "classifier")) == kept


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


# --- an ensemble's trace (the layout measured on Triton 2.51) -------------------------------------
# One file per traced request of the ensemble ``detection``: each step's entry first (model_name,
# model_version, parent_id), the ensemble's own last. UINT8 elements are written as characters, so
# the frame below holds a raw quote, a comma, a backslash, a NUL and bytes that are not UTF-8.
FRAME = np.array([[[[34, 44, 92], [0, 255, 128]]]], np.uint8)  # [1, 1, 2, 3]: one frame of 1 x 2 pixels


def characters(values: np.ndarray) -> bytes:
    return b",".join(bytes([v]) for v in values.ravel().tolist())


def entry(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def tensor(id_: int, activity: str, name: str, data: bytes, shape: str, dtype: str) -> bytes:
    return (b'{"id":%d,"activity":"%s","tensor":{"name":"%s","data":"' % (id_, activity.encode(), name.encode())
            + data + b'","shape":"%s","dtype":"%s"}}' % (shape.encode(), dtype.encode()))


def stamp(id_: int, name: str, ns: int) -> bytes:
    return entry(id=id_, timestamps=[{"name": name, "ns": ns}])


def ensemble_trace(detector_version: int = 3, with_parent: bool = True) -> bytes:
    steps = [
        entry(id=4, model_name="detector_nms", model_version=1, parent_id=1),
        # Not numbers: a reader that parsed the steps' tensors would fail on this file.
        tensor(4, "TENSOR_QUEUE_INPUT", "RAW", b"not,numbers", "1,2", "FP32"),
        entry(id=3, model_name="detector", model_version=detector_version, parent_id=1),
        tensor(3, "TENSOR_QUEUE_INPUT", "INPUT", b"0.1,0.2", "1,2", "FP32"),
        entry(id=2, model_name="detector_pre", model_version=1, parent_id=1),
        tensor(2, "TENSOR_QUEUE_INPUT", "IMAGE", characters(FRAME), "1,1,2,3", "UINT8"),
    ]
    parent = [
        stamp(1, "HTTP_RECV_START", 1), entry(id=1, model_name="detection", model_version=1),
        stamp(1, "REQUEST_START", 2_000_000),
        tensor(1, "TENSOR_QUEUE_INPUT", "IMAGE", characters(FRAME), "1,1,2,3", "UINT8"),
        tensor(1, "TENSOR_BACKEND_OUTPUT", "COUNT", b"1", "1,1", "INT32"),
        tensor(1, "TENSOR_BACKEND_OUTPUT", "BOXES", b"1.5,2,10,12.25,0,0,0,0", "1,2,4", "FP32"),
        stamp(1, "REQUEST_END", 32_000_000),
    ]
    return b"[" + b",".join(steps + (parent if with_parent else [])) + b"]"


def test_an_ensemble_trace_gives_client_inputs_final_outputs_and_the_steps_versions() -> None:
    text = ensemble_trace()
    with pytest.raises(ValueError):
        json.loads(text)  # what Triton writes for UINT8 is not JSON
    [sample] = parse_trace(text, "detection")
    assert sample.inputs["IMAGE"].dtype == np.uint8 and np.array_equal(sample.inputs["IMAGE"], FRAME)
    assert sample.outputs["COUNT"].tolist() == [[1]] and sample.outputs["BOXES"][0, 0].tolist() == [1.5, 2, 10, 12.25]
    assert sample.steps == {"detector_pre": 1, "detector": 3, "detector_nms": 1} and sample.version == 1
    assert sample.served_ms == 30.0
    assert model_of(text[:2048]) == "detector_nms"  # the first bytes name a step, not the ensemble


def test_nested_tail_takes_the_ensembles_files_and_leaves_others(tmp_path: Path) -> None:
    (tmp_path / "trace.json.1").write_bytes(ensemble_trace())
    (tmp_path / "trace.json.2").write_text(json.dumps(trace()))  # the classifier's
    (tmp_path / "trace.json.3").write_bytes(ensemble_trace(with_parent=False)[:-1])  # steps written, not the rest
    tail = TraceTail(tmp_path, "trace.json", "detection", nested=True)
    taken = [tail.take(path)[0] for path in tail.files()]
    assert taken == [Taken.SAMPLES, Taken.FOREIGN, Taken.PARTIAL]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json.2", "trace.json.3"]
    # A reader of one step leaves the ensemble's files alone, as a reader of another model does.
    (tmp_path / "trace.json.4").write_bytes(ensemble_trace())
    assert TraceTail(tmp_path, "trace.json", "detector").take(tmp_path / "trace.json.4")[0] is Taken.FOREIGN
    (tmp_path / "trace.json.3").write_bytes(ensemble_trace())  # now complete
    assert tail.remove_all() == 2 and [p.name for p in tmp_path.iterdir()] == ["trace.json.2"]


def test_nested_tail_skips_a_full_queue_only_for_its_own_files(tmp_path: Path) -> None:
    (tmp_path / "trace.json.1").write_bytes(ensemble_trace())
    (tmp_path / "trace.json.2").write_text(json.dumps(trace()))
    tail = TraceTail(tmp_path, "trace.json", "detection", nested=True)
    assert [tail.take(path, skip=lambda: True)[0] for path in tail.files()] == [Taken.DROPPED, Taken.FOREIGN]
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json.2"]


def test_characters_that_do_not_fill_the_shape_are_unsupported() -> None:
    text = ensemble_trace().replace(b'"1,1,2,3","dtype":"UINT8"}},{"id":1,"activity":"TENSOR_BACKEND_OUTPUT"',
                                    b'"1,1,2,4","dtype":"UINT8"}},{"id":1,"activity":"TENSOR_BACKEND_OUTPUT"')
    with pytest.raises(UnsupportedTrace, match="IMAGE"):
        parse_trace(text, "detection")


def test_the_tail_is_woken_by_a_written_file_and_sleeps_otherwise(tmp_path: Path) -> None:
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    watch = FolderWatch(tmp_path)
    try:
        assert watch.watching  # Linux: inotify
        threading.Timer(0.05, lambda: (tmp_path / "trace.json.1").write_text("[]")).start()
        started = time.monotonic()
        watch.wait(5.0)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        watch.wait(0.1)  # that write's events were drained: nothing new
        assert time.monotonic() - started >= 0.09
    finally:
        watch.close()
    unwatched = FolderWatch(tmp_path / "missing")  # cannot be watched: the caller polls
    assert not unwatched.watching
    started = time.monotonic()
    unwatched.wait(0.05)
    assert time.monotonic() - started >= 0.04
