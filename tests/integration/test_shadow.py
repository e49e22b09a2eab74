"""Shadow traffic against a real embedded Triton started with tracing available (level OFF)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.core.policy import ShadowPolicy
from orchestrator.daemons.shadow_worker import ShadowWorker, in_process
from orchestrator.errors import PolicyViolation
from orchestrator.sample import Variant, write_faulty_package
from orchestrator.store.shadow_state import active_shadow, read_state
from orchestrator.triton.embedded import EmbeddedTriton
from orchestrator.usecases.promote import require_passed_shadow
from orchestrator.usecases.shadow import start_shadow, stop_shadow
from tests.integration.conftest import CRASHED_STUB_WAIT_S, MODEL, ROOT, Stack, Traffic

pytestmark = pytest.mark.triton


def trace_args(folder: Path) -> tuple[str, ...]:
    return (f"--trace-config=triton,file={folder}/trace.json", "--trace-config=level=OFF",
            "--trace-config=triton,log-frequency=1")


@pytest.fixture
def stack(tmp_path: Path, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    repository, state, traces = tmp_path / "model_repository", tmp_path / "orchestrator_state", tmp_path / "traces"
    shutil.copytree(ROOT / "model_repository", repository)
    shutil.copytree(ROOT / "orchestrator_state", state)
    (state / "trusted_keys").mkdir()
    shutil.copy(build_key.public, state / "trusted_keys" / build_key.public.name)
    traces.mkdir()
    server = EmbeddedTriton(repository, tmp_path / "triton", load_models=(MODEL,), extra_args=trace_args(traces))
    server.start()
    running = Stack(server, repository, state, tmp_path)
    try:
        yield running
    except BaseException:
        print(f"--- tritonserver log tail ---\n{server.log_tail()}")
        raise
    finally:
        server.kill()  # a throwaway server: nothing to unload cleanly


def wait_for(worker: ShadowWorker, compared: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.report().compared < compared and not worker.stopped.is_set():
        time.sleep(0.05)


def production_requests(traffic: Traffic, after: float, before: float) -> int:
    return sum(1 for sent, _, _ in traffic.answers if after <= sent < before)


def test_identical_candidate_passes_and_samples_at_the_rate(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    orch = stack.orchestrator()
    version = orch.import_package(packages[Variant.BASELINE]).version  # the served network, filed again
    registry = CollectorRegistry()
    with Traffic(stack.server.url, threads=2) as traffic:
        worker = start_shadow(orch, MODEL, version, sample_rate=0.25, min_samples=50, run_worker=in_process(registry))
        assert worker is not None and active_shadow(stack.store()) is not None
        tracing_on = time.monotonic()  # the candidate's load is over, tracing is on
        wait_for(worker, 120)
        time.sleep(0.2)  # let the reader catch up with Triton's last files
        served = production_requests(traffic, tracing_on, time.monotonic())
        result = stop_shadow(orch, MODEL, worker)
    assert traffic.failures() == []
    report = result.report
    assert result.verdict.passed, result.verdict.reason
    logits = report.tensors["LOGITS"]
    assert logits.mean_abs_diff < 1e-5 and logits.mean_cosine > 0.99999 and logits.top1_agreement == 1.0
    # The window's edges are approximate: allow a few requests either way.
    assert 0.15 < report.sampled / served < 0.35, (report.sampled, served)
    assert report.served_latency.count > 0 and report.candidate_server_mean_ms
    assert registry.get_sample_value("orchestrator_shadow_samples_total", {"model": MODEL}) == report.compared
    assert registry.get_sample_value("orchestrator_shadow_divergence",
                                     {"model": MODEL, "tensor": "LOGITS", "metric": "mean_cosine"}) > 0.999
    shadow = stack.store().attestation(version).shadow
    assert shadow is not None and shadow["outcome"] == "passed"
    assert stack.store().journal.read().records[-1].action == "shadow"
    assert not stack.store().has_candidate_entry() and active_shadow(stack.store()) is None
    require_passed_shadow(stack.store().snapshot(), version, ShadowPolicy(require=True, min_samples=50))
    assert not list((stack.tmp / "traces").iterdir())


def test_divergent_candidate_fails_naming_tensor_and_metric(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    orch = stack.orchestrator()
    version = orch.import_package(packages[Variant.WORSE]).version
    with Traffic(stack.server.url, threads=2):
        worker = start_shadow(orch, MODEL, version, sample_rate=0.25, min_samples=30, run_worker=in_process())
        assert worker is not None
        wait_for(worker, 40)
        result = stop_shadow(orch, MODEL, worker)
    assert not result.verdict.passed
    assert result.verdict.tensor == "LOGITS" and result.verdict.metric in ("mean_abs_diff", "cosine", "top1_agreement")
    with pytest.raises(PolicyViolation, match="LOGITS"):
        require_passed_shadow(stack.store().snapshot(), version, ShadowPolicy(require=True, min_samples=30))


def faulty(tmp: Path, build_key, mode: str, after: int) -> Path:  # type: ignore[no-untyped-def]
    return build_key.sign(write_faulty_package(tmp / f"faulty-{mode}", mode, after_requests=after))


@pytest.mark.parametrize(("mode", "timeout_s"), [("crash", 2.0), ("slow", 0.02)])
def test_broken_candidate_fails_the_run_not_production(stack: Stack, build_key, mode: str,  # type: ignore[no-untyped-def]
                                                       timeout_s: float) -> None:
    orch = stack.orchestrator(timeout_s=CRASHED_STUB_WAIT_S) if mode == "crash" else stack.orchestrator()
    version = orch.import_package(faulty(stack.tmp, build_key, mode, after=10)).version
    with Traffic(stack.server.url, threads=3) as traffic:
        worker = start_shadow(orch, MODEL, version, sample_rate=0.25, run_worker=in_process(),
                              replay_timeout_s=timeout_s)
        assert worker is not None
        assert worker.stopped.wait(20), "the worker should give up on a broken candidate"
        time.sleep(0.5)  # production keeps going after the candidate broke
        assert read_state(stack.store().state).phase == "failed"  # type: ignore[union-attr]
        result = stop_shadow(orch, MODEL, worker)
    assert traffic.failures() == [] and len(traffic.answers) > 100
    assert result.report.phase == "failed" and result.verdict.outcome.value == "failed"
    assert stack.store().attestation(version).shadow["outcome"] == "failed"


def test_queue_stays_bounded_when_the_candidate_is_slower(stack: Stack, build_key) -> None:  # type: ignore[no-untyped-def]
    orch = stack.orchestrator()
    version = orch.import_package(faulty(stack.tmp, build_key, "slow", after=0)).version
    with Traffic(stack.server.url, threads=2) as traffic:
        worker = start_shadow(orch, MODEL, version, sample_rate=0.25, run_worker=in_process(), queue_size=8)
        assert worker is not None
        time.sleep(3)
        report = worker.report()
        result = stop_shadow(orch, MODEL, worker)
    assert traffic.failures() == []
    assert report.queue_high_water <= 8 and report.dropped > report.compared > 0
    assert len(list((stack.tmp / "traces").iterdir())) == 0
    assert result.report.candidate_errors == 0


def shadow_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """``orchestrate shadow ...`` as an operator types it."""
    return subprocess.run([sys.executable, "-m", "orchestrator", "shadow", *args], env=stack.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_detached_worker_crash_shows_as_failed(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    version = stack.orchestrator().import_package(packages[Variant.BASELINE]).version
    refused = shadow_cli(stack, "start", MODEL, str(version), "--sample-rate", "1")
    assert refused.returncode == 2 and "--sample-rate must be within (0, 0.25]" in refused.stderr
    started = shadow_cli(stack, "start", MODEL, str(version), "--sample-rate", "0.25", "--min-samples", "5")
    assert started.returncode == 0, started.stderr
    with Traffic(stack.server.url, threads=1):
        time.sleep(1.0)
    status = shadow_cli(stack, "status", MODEL, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["phase"] == "running", status.stdout + status.stderr
    assert json.loads(status.stdout)["compared"] >= 5
    os.kill(json.loads(status.stdout)["pid"], signal.SIGKILL)
    time.sleep(0.3)
    status = shadow_cli(stack, "status", MODEL)
    assert status.returncode == 5 and "failed" in status.stdout
    stopped = shadow_cli(stack, "stop", MODEL, "--json")
    assert stopped.returncode == 5 and json.loads(stopped.stdout)["outcome"] == "failed"
    assert not stack.store().has_candidate_entry()
