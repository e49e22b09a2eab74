"""The sample detector behind its ensemble on a real Triton: promote gates by mAP, the watcher on the route.

Clients call the ensemble ``detection``; the versions are ``detector``'s. A candidate is judged through
``detection__candidate`` (the same pre-processing and NMS), and the watcher probes ``detection``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.journal import Record
from orchestrator.sample.detector import (
    ENSEMBLE,
    MODEL,
    DetectorVariant,
    write_detector_package,
    write_faulty_detector_package,
)
from orchestrator.store.metafile import VersionStatus
from orchestrator.store.repository import ModelStore
from orchestrator.triton.protocol import TritonState

from .conftest import Stack
from .detectorkit import DetectionTraffic, start_detector_stack, watching_detector
from .watchkit import wait_for

pytestmark = pytest.mark.triton

# Short windows so a test takes seconds; the rules are the shipped ones. The bake budget is high
# enough that probes run every interval (the budget's own accounting is tested on its own).
WATCH = {"grace_s": 1.0, "metrics_interval_s": 0.5, "bake_budget": 1.0, "probe_budget": 1.0,
         "rules": {"latency": {"min_requests": 10}, "error_rate": {"min_requests": 10}}}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """One server for the refusals: a refused promote leaves serving as it was, so they can share it."""
    stack = start_detector_stack(tmp_path_factory.mktemp("detector"), build_key.public)
    try:
        yield stack
    finally:
        stack.server.kill()


@pytest.fixture
def fresh(tmp_path: Path, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    stack = start_detector_stack(tmp_path, build_key.public)
    try:
        yield stack
    except BaseException:
        print(f"--- tritonserver log tail ---\n{stack.server.log_tail()}")
        raise
    finally:
        stack.server.kill()


def file_package(stack: Stack, package: Path) -> int:
    result = stack.cli("import", str(package))
    assert result.returncode == 0, result.stderr
    return max(stack.orchestrator().repository.model(MODEL).versions())


@pytest.mark.parametrize(("variant", "reason"), [
    (DetectorVariant.NAN, "NaN"),
    (DetectorVariant.EMPTY, "no detections on the golden set"),
    (DetectorVariant.SHIFTED, "points below the served version's"),
    (DetectorVariant.CONFUSED, "points below the served version's"),
    (DetectorVariant.FAILING, "inference failed"),
    (DetectorVariant.CORRUPT, "load failed"),
])
def test_a_bad_detector_is_refused_by_the_right_gate_and_v1_keeps_serving(shared: Stack, tmp_path: Path,
                                                                          build_key, variant, reason):
    version = file_package(shared, build_key.sign(write_detector_package(tmp_path / variant.value, variant)))
    result = shared.cli("promote", MODEL, str(version))
    assert result.returncode == 5, result.stderr
    assert reason in result.stderr, result.stderr
    store = shared.orchestrator().repository.model(MODEL)
    assert store.served() == 1 and store.status(version) is VersionStatus.FAILED
    assert not list(shared.repository.glob("*__candidate"))  # the candidate entry and its ensemble are gone
    states = shared.triton().states("detection")
    assert [e.state.value for e in states.values()] == ["READY"]  # clients' route untouched


def test_the_better_detector_is_verified_through_the_ensemble_and_serves_with_no_failed_request(
        fresh: Stack, tmp_path: Path, build_key):
    version = file_package(fresh, build_key.sign(write_detector_package(tmp_path / "better",
                                                                        DetectorVariant.BETTER)))
    with DetectionTraffic(fresh.server.url, threads=2) as traffic:
        result = fresh.cli("promote", MODEL, str(version))
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    assert traffic.failures() == []
    store = fresh.orchestrator().repository.model(MODEL)
    assert store.served() == version
    golden = store.attestation(version).verification.golden
    assert golden["map50_95"] > golden["served_map50_95"] and golden["map50"] > 0.5
    steps = [r for r in store.journal.read().records if r.details.get("step") == "candidate_loaded"]
    assert steps[-1].details["route"] == "detection"
    status = fresh.cli("status", MODEL)
    assert "clients call detection (ensemble: detector_pre -> detector -> detector_nms), READY" in status.stdout
    # About 6 points worse than what now serves: beyond the policy's 3.
    worse = file_package(fresh, build_key.sign(write_detector_package(tmp_path / "worse", DetectorVariant.WORSE)))
    refused = fresh.cli("promote", MODEL, str(worse))
    assert refused.returncode == 5 and "points below the served version's" in refused.stderr, refused.stderr
    assert "(allowed drop 3.0)" in refused.stderr


def test_a_command_naming_the_ensemble_says_whose_versions_it_serves(shared: Stack):
    result = shared.cli("promote", "detection", "2")
    assert result.returncode == 2
    assert "'detection' is an ensemble: its versions are those of detector" in result.stderr


def _route_ready(stack: Stack) -> bool:
    triton = stack.triton()
    try:
        return any(e.state is TritonState.READY for e in triton.states(ENSEMBLE).values())
    finally:
        triton.close()


def test_status_flags_the_ensemble_when_triton_does_not_hold_it_and_reconcile_loads_it(shared: Stack):
    triton = shared.triton()
    try:
        triton.unload(ENSEMBLE)  # a Triton restarted with the model alone: clients' route is gone
        assert wait_for(lambda: not _route_ready(shared), 20)
        status = shared.cli("status", MODEL)
        assert status.returncode == 14, status.stderr
        assert ("detection, the ensemble clients call, is UNAVAILABLE in Triton: clients fail until it is loaded "
                "(`orchestrate reconcile detector`)") in status.stderr
        assert "clients call detection (ensemble: detector_pre -> detector -> detector_nms), UNAVAILABLE" \
            in status.stdout
        reconciled = shared.cli("reconcile", MODEL)
        assert reconciled.returncode == 0, reconciled.stderr
        assert "loaded detection, the ensemble clients call to reach detector" in reconciled.stdout
        assert _route_ready(shared)
        assert shared.cli("status", MODEL).returncode == 0
        assert shared.cli("reconcile", MODEL).stdout.count("loaded detection") == 0  # READY: left alone
    finally:
        if not _route_ready(shared):
            triton.load(ENSEMBLE)
        triton.close()


def _refused_in_one_line(stack: Stack, store: ModelStore, version: int, code: int, *says: str) -> None:
    """``promote`` refused before touching anything: one line, its exit code, v1 serving, nothing journaled."""
    records = len(store.journal.read().records)
    result = stack.cli("promote", MODEL, str(version))
    assert result.returncode == code, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(text in line for text in says), line
    assert len(store.journal.read().records) == records
    assert store.served() == 1 and store.status(version) is VersionStatus.UNVERIFIED
    assert not list(stack.repository.glob("*__candidate"))
    triton = stack.triton()
    try:
        assert {v: e.state for v, e in triton.states(MODEL).items() if e.state is TritonState.READY} == \
            {1: TritonState.READY}
    finally:
        triton.close()
    assert _route_ready(stack)


def test_an_ambiguous_route_or_a_broken_truth_file_refuses_promote_in_one_line(shared: Stack, tmp_path: Path,
                                                                             build_key):
    # v1's network under another number (the fault never comes): a version promote would verify.
    same = build_key.sign(write_faulty_detector_package(tmp_path / "same", "empty", after_requests=10**9))
    version = file_package(shared, same)
    store = shared.orchestrator().repository.model(MODEL)
    second = shared.repository / "detection_hd"
    shutil.copytree(shared.repository / ENSEMBLE, second)
    config = second / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "detection"', 'name: "detection_hd"'))
    try:
        _refused_in_one_line(shared, store, version, 4, "detector serves through several ensembles "
                             "(detection, detection_hd)", "`route:` under promotion in its policy.yaml")
    finally:
        shutil.rmtree(second)
    truth = shared.state / MODEL / "golden" / "truth.npy"
    kept = truth.read_bytes()
    try:
        truth.write_bytes(kept[: len(kept) // 2])  # cut short on disk
        _refused_in_one_line(shared, store, version, 6, "golden set in", "is unreadable")
        np.save(truth, np.array([[999, 1, 0, 0, 8, 8]], np.float32))  # a frame the golden set does not have
        _refused_in_one_line(shared, store, version, 6, "truth.npy: truth row 0 has frame index 999, outside 0..")
    finally:
        truth.write_bytes(kept)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """One server for the watcher's rollbacks: each ends with v1 serving again and the bad version quarantined."""
    stack = start_detector_stack(tmp_path_factory.mktemp("watched"), build_key.public)
    try:
        yield stack
    finally:
        stack.server.kill()


# No detections and swapped classes reach the same rules as shifted boxes (box agreement, mAP): they are
# refused at promote above, and rolled back in `scripts/bench detector anomalies`.
@pytest.mark.parametrize(("mode", "rules"), [
    ("nan", {"output_sanity", "divergence"}),
    ("shifted", {"divergence", "golden_score"}),
    ("errors", {"probe_errors", "error_rate"}),
])
def test_a_detector_that_turns_bad_behind_the_ensemble_is_rolled_back(watched: Stack, tmp_path: Path, build_key,
                                                                      mode, rules):
    package = build_key.sign(write_faulty_detector_package(tmp_path / mode, mode, after_requests=60))
    version = file_package(watched, package)
    store = watched.orchestrator().repository.model(MODEL)
    assert store.served() == 1
    with watching_detector(watched, WATCH) as daemon, DetectionTraffic(watched.server.url):
        watched.orchestrator().promote(MODEL, version)
        rolled = lambda: [r for r in store.journal.read().records  # noqa: E731
                          if r.action == "rollback" and r.result == "succeeded" and r.actor == "watch"
                          and r.from_version == version]
        assert wait_for(rolled, 40), f"no automatic rollback for {mode}"
    record = rolled()[0]
    assert record.to_version == 1
    assert record.details["evidence"]["rule"] in rules, record.details["evidence"]
    assert store.served() == 1 and store.status(version) is VersionStatus.QUARANTINED
    assert daemon.watchers[MODEL].probe is not None and daemon.watchers[MODEL].probe.target == "detection"


# Drift on detections: short windows, and "for 2 minutes" cut to half a second. 16 frames a window keep "none
# at all" beyond 3 sigma of the floor (sqrt(16 x mean) > 3) for any baseline above 0.6 detections per frame;
# the class shares of so few boxes vary too much for the default shift. The probes would catch this version
# too and roll it back (above), so they are off: drift on what clients got is judged alone.
DRIFT_WATCH = {**WATCH, "probe_budget": 0.0, "bake_budget": 0.0,
               "rules": {**WATCH["rules"], "latency": {"min_requests": 10, "severity": "alert"},
                         "drift": {"statistic": "detections", "window": 16, "baseline_windows": 2, "for_checks": 2,
                                   "for_s": 0.5, "samples_per_s": 40, "max_class_shift": 0.6}}}


def _journaled(store: ModelStore, action: str, **fields: object) -> list[Record]:
    return [r for r in store.journal.read().records if r.action == action
            and all(getattr(r, name) == value for name, value in fields.items())]


def test_a_detector_that_stops_detecting_behind_the_ensemble_raises_drift_naming_its_version(
        watched: Stack, tmp_path: Path, build_key):
    version = file_package(watched, build_key.sign(write_faulty_detector_package(tmp_path / "empty", "empty",
                                                                                 after_requests=30)))
    store = watched.orchestrator().repository.model(MODEL)
    assert store.served() == 1
    try:
        with watching_detector(watched, DRIFT_WATCH) as daemon, DetectionTraffic(watched.server.url):
            assert wait_for(lambda: _journaled(store, "baseline", to_version=1), 30), "no drift baseline for v1"
            watched.orchestrator().promote(MODEL, version)
            drifted = lambda: [r for r in _journaled(store, "anomaly", from_version=version)  # noqa: E731
                               if r.details["evidence"]["rule"] == "drift"]
            assert wait_for(drifted, 30), "no drift anomaly"
        alert = drifted()[0]
        evidence = alert.details["evidence"]
        assert alert.result == "alert" and alert.details["severity"] == "alert"  # drift alerts by default
        assert evidence["detail"].startswith(f"detector v{version} through detection: 0.00 detections per frame "
                                             f"over 16 frames"), evidence["detail"]
        assert "from v1's baseline" in evidence["detail"] and evidence["values"]["z"] > 3
        assert evidence["values"]["baseline_mean"] > 0.5
        assert store.served() == version and _journaled(store, "rollback", from_version=version) == []
        assert daemon.watchers[MODEL].drift is not None and daemon.watchers[MODEL].drift.sampler.traced == ENSEMBLE
        triton = watched.triton()
        assert triton.trace_settings(ENSEMBLE)["trace_level"] == ["OFF"]  # handed back when the watcher stopped
        triton.close()
    finally:
        if store.served() != 1:
            watched.orchestrator().rollback(MODEL, to=1, reason="test over")
    assert store.served() == 1


def test_a_healthy_detector_under_load_through_its_cold_start_is_never_rolled_back(fresh: Stack, tmp_path: Path,
                                                                                    build_key):
    version = file_package(fresh, build_key.sign(write_detector_package(tmp_path / "better",
                                                                        DetectorVariant.BETTER)))
    with watching_detector(fresh, WATCH), DetectionTraffic(fresh.server.url, threads=3, period_s=0.0) as traffic:
        time.sleep(2.0)
        fresh.orchestrator().promote(MODEL, version)
        time.sleep(10.0)  # several grace periods, metric intervals and full golden passes of the new version
    store = fresh.orchestrator().repository.model(MODEL)
    assert [r for r in store.journal.read().records if r.action == "rollback"] == []
    assert store.served() == version
    assert traffic.failures() == []


def test_a_repository_with_both_models_is_watched_and_shown_whole_and_names_are_asked_for(tmp_path: Path,
                                                                                        build_key):
    stack = start_detector_stack(tmp_path, build_key.public, with_classifier=True)
    try:
        status = stack.cli("status")
        assert status.returncode == 0, status.stderr
        assert "model classifier: serving v1" in status.stdout and "model detector: serving v1" in status.stdout
        assert "detection" not in status.stdout.split("model detector")[0]  # the ensemble is the detector's route
        unnamed = stack.cli("rollback")
        assert unnamed.returncode == 2
        assert "name the model: the repository holds classifier, detector" in unnamed.stderr
        with watching_detector(stack, WATCH, models=None) as daemon:
            assert wait_for(lambda: all(daemon.registry.get_sample_value("orchestrator_checks_total", {"model": m})
                                        for m in ("classifier", MODEL)), 20)
        assert set(daemon.watchers) == {"classifier", MODEL}
        assert daemon.watchers[MODEL].probe is not None and daemon.watchers[MODEL].probe.target == "detection"
        assert daemon.watchers["classifier"].probe is not None
        assert daemon.watchers["classifier"].probe.target == "classifier"
    finally:
        stack.server.kill()
