"""The sample detector behind its ensemble on a real Triton: promote gates by mAP, the watcher on the route.

Clients call the ensemble ``detection``; the versions are ``detector``'s. A candidate is judged through
``detection__candidate`` (the same pre-processing and NMS), and the watcher probes ``detection``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.sample.detector import MODEL, DetectorVariant, write_detector_package, write_faulty_detector_package
from orchestrator.store.metafile import VersionStatus

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
