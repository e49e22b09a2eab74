"""Shadow traffic for the detector served inside the ``detection`` ensemble, on a real tritonserver.

Clients call ``detection``; the run traces it, replays the traced frames to ``detection__candidate``
(whose ``detector`` step is ``detector__candidate``) and judges the boxes, not the tensors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.core.shadow_stats import ShadowReport
from orchestrator.daemons.shadow_worker import ShadowWorker, in_process
from orchestrator.sample.detector import ENSEMBLE, MODEL, DetectorVariant, write_detector_package
from orchestrator.store.repository import ModelStore
from orchestrator.store.shadow_state import active_shadow
from orchestrator.usecases.shadow import start_shadow, stop_shadow

from .conftest import Stack
from .detectorkit import DetectionTraffic, set_policy, start_detector_stack

pytestmark = pytest.mark.triton

# The sample's better head is a refit on twice the frames: on the 16 frames the traffic sends, 0.79 of its boxes
# match the baseline's and it finds 0.69 boxes per frame more or fewer (measured in-process with
# core.detection.agreement), short of the shipped 0.9 / 0.3; which frames a run samples moves that (0.74 and 0.93
# seen), hence the room here. The shifted head matches none.
SHADOW = {"min_box_agreement": 0.5, "max_count_diff": 1.5, "min_samples": 20}


@pytest.fixture
def stack(tmp_path: Path, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    running = start_detector_stack(tmp_path, build_key.public)
    set_policy(running, "shadow", SHADOW)
    try:
        yield running
    except BaseException:
        print(f"--- tritonserver log tail ---\n{running.server.log_tail()}")
        raise
    finally:
        running.server.kill()


def store_of(stack: Stack) -> ModelStore:
    return ModelStore(stack.repository / MODEL, stack.state / MODEL)


def file_variant(stack: Stack, tmp: Path, build_key, variant: DetectorVariant) -> int:  # type: ignore[no-untyped-def]
    package = build_key.sign(write_detector_package(tmp / variant.value, variant))
    return stack.orchestrator().import_package(package).version


def shadow(stack: Stack, version: int, compared: int, registry: CollectorRegistry | None = None) -> ShadowReport:
    orch = stack.orchestrator()
    with DetectionTraffic(stack.server.url, threads=2) as traffic:
        worker = start_shadow(orch, MODEL, version, sample_rate=0.25, run_worker=in_process(registry))
        assert isinstance(worker, ShadowWorker) and active_shadow(store_of(stack)) is not None
        assert stack.triton().model_ready(f"{ENSEMBLE}__candidate")
        deadline = time.monotonic() + 40.0
        while time.monotonic() < deadline and worker.report().compared < compared and not worker.stopped.is_set():
            time.sleep(0.1)
        result = stop_shadow(orch, MODEL, worker)
    assert traffic.failures() == []
    return result


def test_the_better_detector_passes_judged_by_its_boxes(stack: Stack, tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    version = file_variant(stack, tmp_path, build_key, DetectorVariant.BETTER)
    registry = CollectorRegistry()
    result = shadow(stack, version, compared=30, registry=registry)
    report = result.report
    assert result.verdict.passed, result.verdict.reason
    detection = report.detection
    assert detection is not None and detection.frames >= report.compared >= 20
    assert detection.matched_share >= SHADOW["min_box_agreement"] and detection.undecodable == 0
    assert detection.served_per_frame > 1 and sum(detection.served_class_shares.values()) == pytest.approx(1.0)
    assert report.tensors == {}  # padded boxes are not compared element by element
    assert report.served_versions == {1: report.compared}  # production's answers came from v1, the served detector
    assert report.served_latency.count > 0 and report.candidate_server_mean_ms  # the ensembles' own times
    assert registry.get_sample_value("orchestrator_shadow_divergence", {
        "model": MODEL, "tensor": "detections", "metric": "matched_share"}) == pytest.approx(detection.matched_share)
    recorded = store_of(stack).attestation(version).shadow
    assert recorded is not None and recorded["outcome"] == "passed"
    assert recorded["report"]["detection"]["matched_share"] == pytest.approx(detection.matched_share)
    # The run took its candidate route with it, and its trace files, and tracing is off again.
    assert not list(stack.repository.glob("*__candidate")) and not store_of(stack).has_candidate_entry()
    assert not list((stack.tmp / "triton" / "traces").glob("trace.json.*"))
    assert stack.triton().trace_settings(ENSEMBLE)["trace_level"] == ["OFF"]


def test_the_shifted_detector_fails_on_box_agreement(stack: Stack, tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    version = file_variant(stack, tmp_path, build_key, DetectorVariant.SHIFTED)
    result = shadow(stack, version, compared=20)
    assert not result.verdict.passed
    assert (result.verdict.tensor, result.verdict.metric) == ("detections", "box_agreement"), result.verdict.reason
    assert result.report.detection is not None and result.report.detection.matched_share < 0.3
    assert store_of(stack).attestation(version).shadow["outcome"] == "failed"
    assert not list(stack.repository.glob("*__candidate"))


def test_the_cli_shadows_through_the_ensemble_with_a_detached_worker(stack: Stack, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                     build_key) -> None:
    version = file_variant(stack, tmp_path, build_key, DetectorVariant.BETTER)
    started = stack.cli("shadow", "start", MODEL, str(version), "--sample-rate", "0.25", "--min-samples", "3")
    assert started.returncode == 0, started.stderr
    with DetectionTraffic(stack.server.url, threads=2):
        deadline, compared = time.monotonic() + 30.0, 0
        while time.monotonic() < deadline and compared < 3:
            time.sleep(0.5)
            status = stack.cli("shadow", "status", MODEL, "--json")
            compared = json.loads(status.stdout)["compared"] if status.returncode == 0 else 0
    stopped = stack.cli("shadow", "stop", MODEL)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "of boxes matched (IoU 0.5, same class)" in stopped.stdout and "production answered by v1" in stopped.stdout
    assert not list(stack.repository.glob("*__candidate"))
