"""A real Prometheus with the shipped scrape config and alert rules, scraping a real controller's /metrics (its
store holding a halted rollout whose devices still serve the version): the fleet alerts fire on the series
the controller really serves, under the job the shipped config gives it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.fleet.controller import Controller
from orchestrator.fleet.metrics import ControllerMetrics, serve_controller_metrics
from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.rollout import Event, Phase, halt, on_event, start, step
from orchestrator.fleet.store import FleetStore
from orchestrator.triton.embedded import free_ports
from tests.prometheus_server import PrometheusServer, scrape_config, wait_for
from tests.unit.fleet.planning import SHA, raw_plan

MODEL = "classifier"
JOB = "orchestrator-fleet"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    (tmp_path / "prometheus").mkdir()
    server = PrometheusServer(tmp_path / "prometheus")
    yield server
    server.stop()


def _report(served: int, sha: str) -> dict[str, object]:
    return {"models": {MODEL: {"served": served, "served_sha256": sha, "versions": {}}}}


def _halted_fleet(store: FleetStore, now: float) -> int:
    """Ten devices; the first wave's took the version and the rollout halted: they are told to revert and
    still serve it. Returns how many."""
    names = [f"cam-{i}" for i in range(10)]
    store.enrol({d: {"site": "plant-1"} for d in names})
    store.record_reports([(d, _report(1, "cd" * 32), now) for d in names])
    for d in names:
        store.record_presence(d, True, now)
    raw = raw_plan()
    rollout = start(build_plan(raw), store.views(MODEL), now)
    told = step(rollout, store.views(MODEL), now)
    rollout = told.rollout
    for tell in told.tells:
        rollout, _ = on_event(rollout, Event(tell.device, "serving", now, 2))
    store.record_reports([(t.device, _report(2, SHA), now) for t in told.tells])
    store.add_rollout(halt(rollout, now, Phase.HALTED, "gate failed (errors)").rollout, raw, b"plan", "release")
    return len(told.tells)


def test_a_real_prometheus_scrapes_the_controller_and_fires_the_fleet_alerts(tmp_path: Path,
                                                                             prometheus: PrometheusServer) -> None:
    store = FleetStore(tmp_path / "fleet.db")
    left = _halted_fleet(store, time.time())
    assert left >= 1
    controller = Controller(store, Ed25519PrivateKey.generate(), {})
    metrics = ControllerMetrics()
    metrics.refresh(controller)
    port = free_ports(1)[0]
    server = serve_controller_metrics(metrics, "127.0.0.1", port)
    try:
        prometheus.start(scrape_config({JOB: f"127.0.0.1:{port}"}))
        assert wait_for(lambda: prometheus.targets() == {JOB: "up"}, 20), prometheus.api("targets")
        assert wait_for(lambda: prometheus.firing("FleetRolloutHalted"), 20), prometheus.api("alerts")
        (alert,) = prometheus.firing("FleetRolloutHalted")
        assert (alert["rollout"], alert["model"], alert["job"], alert["severity"]) == ("r1", MODEL, JOB, "warning")
        result = prometheus.api("query", query='orchestrator_fleet_left_on_version{rollout="r1"}')["result"]
        assert [float(r["value"][1]) for r in result] == [left]
        # waiting out its 10 minutes: pending, on the series the controller serves
        assert wait_for(lambda: prometheus.alerts("FleetDevicesLeftOnBadVersion", "pending"), 10)
        assert prometheus.firing("FleetControllerDown") == [] and prometheus.firing("FleetGateFailing") == []
    finally:
        server.shutdown()
        server.server_close()
        store.close()
    # The controller gone: its own job's `up` is 0, and FleetControllerDown waits out its 5 minutes.
    assert wait_for(lambda: prometheus.alerts("FleetControllerDown", "pending"), 20), prometheus.api("alerts")
