"""Output distribution drift against a real Triton: production outputs sampled by tracing.

Windows are short and the tracing budget high so a test takes seconds; the statistic, the
baselines and the judgement are the shipped ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.daemons.sampler import ProductionSampler
from orchestrator.daemons.shadow_worker import in_process
from orchestrator.sample import sample_images, write_faulty_package
from orchestrator.store.baselines import DRIFT_BASELINE_FILE
from orchestrator.store.metafile import VersionStatus
from orchestrator.triton.embedded import free_ports
from orchestrator.triton.protocol import OWN_REQUEST
from orchestrator.usecases.shadow import start_shadow, stop_shadow

from .conftest import MODEL, Stack, Traffic
from .watchkit import TEST_WATCH, sample_value, set_watch_policy, wait_for, watch_rollbacks, watching

pytestmark = pytest.mark.triton

DRIFT = {"window": 20, "baseline_windows": 5, "for_checks": 2, "samples_per_s": 40}


def _policy(**drift: Any) -> dict[str, Any]:
    return {**TEST_WATCH, "rules": {**TEST_WATCH["rules"], "drift": {**DRIFT, **drift}}}


def _baseline_recorded(stack: Stack, version: int) -> bool:
    return any(r.action == "baseline" and r.to_version == version for r in stack.store().journal.read().records)


def _anomalies(stack: Stack, rule: str) -> list:  # type: ignore[type-arg]
    return [r for r in stack.store().journal.read().records
            if r.action == "anomaly" and r.details["evidence"]["rule"] == rule]


def _drift_story(stack: Stack, daemon: Any) -> str:
    """What the drift rule saw, for a failure's message: its values, the baselines and anomalies journaled."""
    values = {key: sample_value(daemon, "orchestrator_rule_value", model=MODEL, rule="drift", value=key)
              for key in ("z", "value", "baseline_mean", "baseline_sigma", "samples")}
    records = [(r.action.value, r.to_version, r.reason) for r in stack.store().journal.read().records
               if r.action.value in ("baseline", "anomaly", "promote")]
    return f"rule values {values}; records {records}"


def _images(seed: int, brighten: float = 0.0, only_class: int | None = None) -> np.ndarray:
    images, labels = sample_images(400, seed)
    if only_class is not None:
        images = images[labels == only_class]
    return (images + np.float32(brighten)).astype(np.float32)


def test_version_that_fails_only_on_live_inputs_is_rolled_back_on_drift(stack: Stack, tmp_path: Path, build_key):
    # v2 answers golden images like v1 but calls every bright image class 0: promote's checks and
    # the golden probes pass it; the class histogram of what clients got does not.
    package = build_key.sign(write_faulty_package(tmp_path / "drifting", "drift", after_requests=0))
    assert stack.cli("import", str(package)).returncode == 0
    policy = _policy(severity="rollback")
    # Traced requests run slower on a loaded machine (a CI runner): latency may alert, drift is judged here.
    policy["rules"]["latency"] = {**policy["rules"]["latency"], "severity": "alert"}
    with watching(stack, policy) as daemon, \
            Traffic(stack.server.url, threads=2, images=_images(21, brighten=0.5)) as traffic:
        assert wait_for(lambda: _baseline_recorded(stack, 1), 60), "no drift baseline for v1"
        stack.orchestrator().promote(MODEL, 2)
        assert wait_for(lambda: watch_rollbacks(stack), 60), f"no rollback on drift: {_drift_story(stack, daemon)}"
        time.sleep(0.3)
    record = watch_rollbacks(stack)[0]
    evidence = record.details["evidence"]
    assert (record.from_version, record.to_version) == (2, 1)
    assert evidence["rule"] == "drift", evidence
    assert "class 0 share" in evidence["detail"] and "v1's baseline" in evidence["detail"]
    assert evidence["values"]["z"] > 3 and evidence["values"]["value"] > 0.5
    store = stack.store()
    assert store.served() == 1 and stack.served_by_triton() == 1
    assert store.status(2) is VersionStatus.QUARANTINED
    assert sample_value(daemon, "orchestrator_rollbacks_total", model=MODEL, rule="drift", trigger="watch") == 1
    assert sample_value(daemon, "orchestrator_watch_production_samples_total", model=MODEL) >= 100
    assert [e for e in traffic.failures() if "classifier" in e] == []
    assert (stack.state / MODEL / DRIFT_BASELINE_FILE).exists()
    status = json.loads(stack.cli("status", "--json").stdout)[0]
    assert {row["version"]: row["drift_baseline"] for row in status["versions"]}[1] == "5/5"
    history = stack.cli("history").stdout
    assert "baseline   succeeded" in history and "drift baseline of v1 recorded over 5 windows" in history


def test_steady_inputs_never_drift_and_shifted_inputs_alert_without_rollback(stack: Stack):
    traffic = Traffic(stack.server.url, threads=2, images=_images(22))
    # The shipped debounce (3 windows in a row) with the test's short windows and baseline.
    with watching(stack, _policy(severity="rollback", for_checks=3)) as daemon, traffic:
        assert wait_for(lambda: _baseline_recorded(stack, 1), 60), "no drift baseline for v1"
        watcher = daemon.watchers[MODEL]
        judged_from = sample_value(daemon, "orchestrator_watch_production_samples_total", model=MODEL)
        # v1 against its own baseline on the same kind of inputs, for a sustained run: no anomaly.
        assert wait_for(lambda: sample_value(daemon, "orchestrator_watch_production_samples_total", model=MODEL)
                        >= judged_from + 8 * DRIFT["window"], 60)
        assert _anomalies(stack, "drift") == []
        assert watcher.streaks.get("drift") is None or watcher.streaks["drift"].count < 3
        # The camera now sees one class only: the inputs drifted, which no other version would fix.
        traffic.images = _images(23, only_class=3)
        assert wait_for(lambda: _anomalies(stack, "drift"), 60), "no drift alert"
    alert = _anomalies(stack, "drift")[0]
    assert alert.result == "alert" and alert.details["severity"] == "alert"
    assert "inputs drifted" in alert.details["evidence"]["detail"]
    assert watch_rollbacks(stack) == [] and stack.store().served() == 1
    assert sample_value(daemon, "orchestrator_anomalies_total", model=MODEL, rule="drift", severity="alert") == 1


def test_a_shadow_run_takes_over_the_traces_and_drift_sampling_resumes_after(stack: Stack, packages):
    from orchestrator.sample import Variant  # noqa: PLC0415

    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    orch = stack.orchestrator()
    samples = lambda: sample_value(daemon, "orchestrator_watch_production_samples_total", model=MODEL)  # noqa: E731
    with watching(stack, _policy()) as daemon, Traffic(stack.server.url, threads=2, images=_images(24)):
        assert wait_for(lambda: samples() > 20, 30), "the watcher sampled nothing"
        worker = start_shadow(orch, MODEL, 2, sample_rate=0.25, min_samples=5, run_worker=in_process())
        assert worker is not None
        drift = daemon.watchers[MODEL].drift
        assert drift is not None
        sampler = drift.sampler
        assert wait_for(lambda: sampler.standing_aside, 10), "the watcher kept sampling during the shadow run"
        assert wait_for(lambda: worker.report().compared >= 10, 30), "the shadow run got no traces"
        during = samples()
        time.sleep(1.5)
        assert samples() == during  # nothing taken from the shadow run
        assert "shadow run of v2" in (sampler.reason or "")
        result = stop_shadow(orch, MODEL, worker)
        assert result.report.compared >= 10
        assert wait_for(lambda: samples() > during + 20, 30), "drift sampling did not resume"
    settings = stack.triton().trace_settings(MODEL)
    assert settings["trace_level"] == ["OFF"]  # the watcher handed tracing back when it stopped


def test_sampler_arms_a_lease_and_leaves_no_tracing_behind(stack: Stack, tmp_path: Path):
    triton = stack.triton()
    store = stack.store()
    missing = ProductionSampler(triton, store, samples_per_s=2.0, trace_dir=tmp_path / "not-mounted")
    assert missing.poll(None) == [] and "--trace-dir" in missing.reason
    assert triton.trace_settings(MODEL)["trace_level"] == ["OFF"]  # nothing armed without a place to read
    sampler = ProductionSampler(triton, store, samples_per_s=2.0)
    with Traffic(stack.server.url, threads=1, images=_images(25)):
        sampler.poll(None)
        armed = triton.trace_settings(MODEL)
        assert armed["trace_level"] == ["TIMESTAMPS", "TENSORS"]
        assert armed["trace_rate"] == "1000" and armed["trace_count"] == "120"  # a minute's samples, no more
        sampler.poll(400.0)  # 400 requests/s: 1 in 200 for 2 samples/s
        assert triton.trace_settings(MODEL)["trace_rate"] == "200"
        assert wait_for(lambda: sampler.poll(400.0), 10), "no production output sampled"
    sampler.close()
    assert triton.trace_settings(MODEL)["trace_level"] == ["OFF"]
    assert not list(stack.server.workdir.joinpath("traces").glob("trace.json.*"))
    triton.close()


@pytest.mark.parametrize(("drift", "message"), [
    ({"output": "BOXES"}, "watch: rule drift: 'BOXES' is not an output of classifier (LOGITS)"),
    ({"statistic": "median"},
     "watch: rule drift: drift statistic must be one of class_histogram, detection_count, mean"),
])
def test_a_bad_drift_rule_stops_watch_with_one_line(stack: Stack, drift: dict[str, Any], message: str):
    set_watch_policy(stack, _policy(**drift))
    result = stack.cli("watch", "--metrics-port", str(free_ports(1)[0]), timeout=60)
    assert result.returncode == 6, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert message in line and "policy.yaml" in line
    assert stack.triton().trace_settings(MODEL)["trace_level"] == ["OFF"]


def test_the_orchestrators_own_requests_are_never_sampled_as_production(stack: Stack):
    """Triton 2.51 writes a request's id into its trace: a probe's (``OWN_REQUEST``) is read and dropped,
    so drift windows, shadow runs and the replay ring hold what clients sent, not the golden set."""
    triton = stack.triton()
    own_image, client_image = _images(31)[:1], _images(32, brighten=0.5)[:1]
    own = triton.infer(MODEL, {"IMAGE": own_image}, ["LOGITS"], request_id=OWN_REQUEST).outputs["LOGITS"]
    client = triton.infer(MODEL, {"IMAGE": client_image}, ["LOGITS"]).outputs["LOGITS"]
    assert not np.allclose(own, client)
    sampler = ProductionSampler(triton, stack.store(), samples_per_s=1000.0)
    taken = []
    try:
        sampler.poll(1000.0)  # armed at the cap: 1 request in 4 traced
        for _ in range(40):  # a cycle of three against 1 in 4 traced: both kinds get traced
            triton.infer(MODEL, {"IMAGE": own_image}, ["LOGITS"], request_id=OWN_REQUEST)
            triton.infer(MODEL, {"IMAGE": client_image}, ["LOGITS"])
            triton.infer(MODEL, {"IMAGE": client_image}, ["LOGITS"])
        deadline = time.monotonic() + 10
        while len(taken) < 16 and time.monotonic() < deadline:
            taken += sampler.poll(1000.0)
            time.sleep(0.1)
    finally:
        sampler.close()
        triton.close()
    assert len(taken) >= 12, f"{len(taken)} production requests sampled of the ~20 traced"
    assert all(np.allclose(s.outputs["LOGITS"], client, atol=1e-5) for s in taken)
