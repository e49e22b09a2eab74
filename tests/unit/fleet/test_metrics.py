"""The fleet controller's metrics from a real store: devices, every rollout's phase, the details of the active
and the last few finished ones, the service's counters, and the HTTP endpoint."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.errors import UsageError
from orchestrator.fleet.controller import Controller
from orchestrator.fleet.gates import Verdict
from orchestrator.fleet.metrics import FAMILIES, ControllerMetrics, serve_controller_metrics
from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.rollout import DeviceState, Phase, Rollout, start
from orchestrator.fleet.status import rollout_status
from orchestrator.fleet.store import FleetStore
from orchestrator.triton.embedded import free_ports

from .planning import SHA, raw_plan

MODEL = "classifier"
OLD = "cd" * 32  # what the devices served before the rollout's package (SHA)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Service:
    """The counters ControllerService keeps (messages read, steps, the last step's seconds)."""

    messages: int = 0
    ticks: int = 0
    tick_s: float = 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FleetStore]:
    store = FleetStore(tmp_path / "fleet.db")
    yield store
    store.close()


@pytest.fixture
def controller(store: FleetStore, clock: Clock) -> Controller:
    return Controller(store, Ed25519PrivateKey.generate(), {}, clock)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _report(served: int, sha: str) -> dict[str, Any]:
    counters = {"sha256": sha, "requests": 1000, "errors": 1, "latency_ns": 0, "rollbacks": 0}
    return {"models": {MODEL: {"served": served, "served_sha256": sha, "versions": {str(served): counters}}}}


def _enrol(store: FleetStore, clock: Clock, count: int, report_every_s: float = 0.0) -> list[str]:
    """``count`` online devices serving OLD as v1; the i-th reported ``i * report_every_s`` seconds ago."""
    names = [f"cam-{i:04d}" for i in range(count)]
    store.enrol({d: {"site": f"s{i % 3}", "hw": "nano" if i % 10 == 0 else "nx"} for i, d in enumerate(names)})
    store.record_reports([(d, _report(1, OLD), clock.now - i * report_every_s) for i, d in enumerate(names)])
    for d in names:
        store.record_presence(d, True, clock.now)
    return names


def _start(store: FleetStore, clock: Clock, rollout_id: str = "r1") -> Rollout:
    raw = raw_plan(rollout=rollout_id)
    rollout = start(build_plan(raw), store.views(MODEL), clock.now)
    store.add_rollout(rollout, raw, b"the signed plan file", "release-key")
    return rollout


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _states(registry: CollectorRegistry, rollout: str) -> dict[str, float | None]:
    return {s.value: _value(registry, "orchestrator_fleet_rollout_devices", rollout=rollout, state=s.value)
            for s in DeviceState}


def _phases(registry: CollectorRegistry, rollout: str) -> dict[str, float | None]:
    return {p.value: _value(registry, "orchestrator_fleet_rollout_phase", rollout=rollout, model=MODEL,
                            phase=p.value) for p in Phase}


def test_every_family_is_there_before_the_first_refresh(registry: CollectorRegistry) -> None:
    ControllerMetrics(registry)
    text = generate_latest(registry).decode()
    for name, (help_text, _) in FAMILIES.items():
        assert f"# HELP {name} {help_text}" in text and f"# TYPE {name} gauge" in text
    assert "orchestrator_fleet_messages_total 0.0" in text and "orchestrator_fleet_steps_total 0.0" in text
    assert "orchestrator_fleet_step_seconds_count 0.0" in text


def test_devices_by_presence_and_how_long_since_they_reported(store: FleetStore, clock: Clock,
                                                             controller: Controller,
                                                             registry: CollectorRegistry) -> None:
    names = _enrol(store, clock, 10, report_every_s=10)
    for d in names[7:]:
        store.record_presence(d, False, clock.now)
    store.enrol({"cam-new": {"site": "s0"}})  # enrolled, never reported
    clock.now += 5
    ControllerMetrics(registry).refresh(controller)
    assert _value(registry, "orchestrator_fleet_devices", state="online") == 7
    assert _value(registry, "orchestrator_fleet_devices", state="offline") == 4
    # ages 5, 15 ... 95 and +Inf: the nearest rank of each quantile
    ages = {q: _value(registry, "orchestrator_fleet_device_last_report_age_seconds", quantile=q)
            for q in ("0.5", "0.9", "0.99", "1")}
    assert ages == {"0.5": 55.0, "0.9": 95.0, "0.99": float("inf"), "1": float("inf")}
    assert _value(registry, "orchestrator_fleet_blocks") == 0


def test_a_started_rollout_exports_its_phase_wave_every_device_state_and_its_gates_bounds(
        store: FleetStore, clock: Clock, controller: Controller, registry: CollectorRegistry) -> None:
    _enrol(store, clock, 20)
    _start(store, clock)
    ControllerMetrics(registry).refresh(controller)
    assert _phases(registry, "r1") == {p.value: float(p is Phase.RUNNING) for p in Phase}
    assert _value(registry, "orchestrator_fleet_rollout_wave", rollout="r1") == 1
    assert _value(registry, "orchestrator_fleet_rollout_waves", rollout="r1") == 4
    assert _states(registry, "r1") == {s.value: 20.0 if s is DeviceState.PENDING else 0.0 for s in DeviceState}
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == 0
    assert _value(registry, "orchestrator_fleet_rollout_last_step_timestamp_seconds", rollout="r1") == clock.now
    # not assessed yet: no gate series, but the plan's bounds
    assert _value(registry, "orchestrator_fleet_gate_verdict", rollout="r1", gate="errors", verdict="pass") is None
    assert _value(registry, "orchestrator_fleet_gate_bound", rollout="r1", gate="verified", bound="min") == 0.9
    assert _value(registry, "orchestrator_fleet_gate_bound", rollout="r1", gate="errors", bound="max") == 0.01
    assert _value(registry, "orchestrator_fleet_gate_bound", rollout="r1", gate="errors", bound="min") is None


def test_a_step_exports_what_it_told_and_each_gates_verdict_value_and_sample(
        store: FleetStore, clock: Clock, controller: Controller, registry: CollectorRegistry) -> None:
    _enrol(store, clock, 20)
    _start(store, clock)
    metrics = ControllerMetrics(registry)
    clock.now += 30
    controller.tick()
    metrics.refresh(controller)
    status = rollout_status(store, "r1")
    assert status.states == {"pending": 18, "told": 2}  # the first wave: 10 %
    assert _states(registry, "r1") == {s.value: float(status.states.get(s.value, 0)) for s in DeviceState}
    assert _value(registry, "orchestrator_fleet_rollout_last_step_timestamp_seconds", rollout="r1") == clock.now
    results = status.rollout.assessment.results
    assert [r.name for r in results] == ["verified", "errors"]
    for result in results:
        verdicts = {v.value: _value(registry, "orchestrator_fleet_gate_verdict", rollout="r1", gate=result.name,
                                    verdict=v.value) for v in Verdict}
        assert verdicts == {v.value: float(v is result.verdict) for v in Verdict}
        assert _value(registry, "orchestrator_fleet_gate_sample", rollout="r1", gate=result.name) == result.sample
        assert _value(registry, "orchestrator_fleet_gate_value", rollout="r1", gate=result.name) == result.value
    assert results[0].verdict is Verdict.INCONCLUSIVE  # nobody verified yet: never a pass


def test_devices_told_to_leave_the_version_and_still_serving_it(store: FleetStore, clock: Clock,
                                                                controller: Controller,
                                                                registry: CollectorRegistry) -> None:
    _enrol(store, clock, 20)
    _start(store, clock)
    metrics = ControllerMetrics(registry)
    controller.tick()
    told = [d for d, a in rollout_status(store, "r1").rollout.assignments.items() if a.state is DeviceState.TOLD]
    store.record_reports([(d, _report(2, SHA), clock.now) for d in told])
    metrics.refresh(controller)
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == 0  # told to take it: fine
    clock.now += 10
    controller.abort("r1")
    metrics.refresh(controller)
    assert _phases(registry, "r1")["aborted"] == 1 and _phases(registry, "r1")["running"] == 0
    assert _value(registry, "orchestrator_fleet_rollout_devices", rollout="r1", state="reverting") == 2
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == 2
    clock.now += 10
    store.record_reports([(told[0], _report(1, OLD), clock.now)])  # one serves its previous version again
    metrics.refresh(controller)
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == 1
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == \
        rollout_status(store, "r1").left_on_version  # what `fleet rollout status` says


def test_finished_rollouts_keep_their_phase_and_only_the_last_few_their_details(
        store: FleetStore, clock: Clock, controller: Controller, registry: CollectorRegistry) -> None:
    _enrol(store, clock, 10)
    metrics = ControllerMetrics(registry, keep_finished=2)
    for n in range(1, 5):
        clock.now += 60
        _start(store, clock, f"r{n}")
        controller.abort(f"r{n}")  # nobody told yet: finished at once, nothing to revert
    clock.now += 60
    _start(store, clock, "r5")
    metrics.refresh(controller)
    for n in range(1, 5):
        assert _phases(registry, f"r{n}") == {p.value: float(p is Phase.ABORTED) for p in Phase}, n
    assert _phases(registry, "r5")["running"] == 1
    detailed = {f"r{n}" for n in range(1, 6)
                if _value(registry, "orchestrator_fleet_rollout_devices", rollout=f"r{n}", state="pending")}
    assert detailed == {"r3", "r4", "r5"}  # the active one and the last two finished
    for name in ("orchestrator_fleet_rollout_wave", "orchestrator_fleet_left_on_version",
                 "orchestrator_fleet_rollout_last_step_timestamp_seconds"):
        assert _value(registry, name, rollout="r2") is None, name
    controller.abort("r5")
    metrics.refresh(controller)
    assert _value(registry, "orchestrator_fleet_rollout_devices", rollout="r3", state="pending") is None
    assert _value(registry, "orchestrator_fleet_rollout_devices", rollout="r5", state="pending") == 10
    assert len([line for line in generate_latest(registry).decode().splitlines()
                if line.startswith("orchestrator_fleet_rollout_devices{")]) == 2 * len(DeviceState)


def test_a_rollout_is_read_again_only_when_the_controller_wrote_it(store: FleetStore, clock: Clock,
                                                                   controller: Controller,
                                                                   registry: CollectorRegistry) -> None:
    _enrol(store, clock, 10)
    _start(store, clock)
    loads: list[str] = []
    load = store.load_rollout

    def counting(db: Any, rollout_id: str, build: Any) -> Rollout:
        loads.append(rollout_id)
        return load(db, rollout_id, build)

    store.load_rollout = counting  # type: ignore[method-assign]
    metrics = ControllerMetrics(registry)
    metrics.refresh(controller)
    metrics.refresh(controller)
    assert loads == ["r1"]
    clock.now += 1
    controller.tick()  # writes r1 (and reads it itself)
    loads.clear()
    metrics.refresh(controller)
    assert loads == ["r1"]


def test_the_services_counters_and_the_step_time(store: FleetStore, clock: Clock, controller: Controller,
                                                 registry: CollectorRegistry) -> None:
    metrics = ControllerMetrics(registry)
    service = Service(messages=5, ticks=2, tick_s=0.25)
    metrics.refresh(controller, service)
    assert _value(registry, "orchestrator_fleet_messages_total") == 5
    assert _value(registry, "orchestrator_fleet_steps_total") == 2
    service.messages, service.ticks = 12, 3
    metrics.refresh(controller, service)
    assert _value(registry, "orchestrator_fleet_messages_total") == 12
    assert _value(registry, "orchestrator_fleet_steps_total") == 3
    assert _value(registry, "orchestrator_fleet_step_seconds_count") == 2
    assert 0.5 <= _value(registry, "orchestrator_fleet_step_seconds_sum") < 1.0  # type: ignore[operator]
    metrics.refresh(controller)  # without the service: its counters stay, the refresh is timed alone
    assert _value(registry, "orchestrator_fleet_messages_total") == 12
    assert _value(registry, "orchestrator_fleet_step_seconds_count") == 3


def test_a_store_that_cannot_be_read_leaves_the_last_series(store: FleetStore, clock: Clock, controller: Controller,
                                                           registry: CollectorRegistry,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    _enrol(store, clock, 3)
    _start(store, clock)
    metrics = ControllerMetrics(registry)
    metrics.refresh(controller)
    store.close()
    with caplog.at_level(logging.WARNING):
        metrics.refresh(controller)
    assert "controller metrics not refreshed" in caplog.text
    assert _value(registry, "orchestrator_fleet_devices", state="online") == 3
    assert _value(registry, "orchestrator_fleet_rollout_phase", rollout="r1", model=MODEL, phase="running") == 1


def test_serves_metrics_over_http_and_says_so_when_the_port_is_taken(store: FleetStore, clock: Clock,
                                                                     controller: Controller) -> None:
    _enrol(store, clock, 2)
    metrics = ControllerMetrics()
    metrics.refresh(controller)
    port = free_ports(1)[0]
    server = serve_controller_metrics(metrics, "127.0.0.1", port)
    try:
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'orchestrator_fleet_devices{state="online"} 2.0' in body
        with pytest.raises(UsageError, match=f"cannot serve the controller's metrics on 127.0.0.1:{port}: .*"
                                             "metrics.port in the controller's configuration"):
            serve_controller_metrics(ControllerMetrics(), "127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_refresh_with_1000_devices_and_1000_assignments_is_cheap(store: FleetStore, clock: Clock,
                                                                   controller: Controller,
                                                                   registry: CollectorRegistry) -> None:
    names = _enrol(store, clock, 1000)
    _start(store, clock)
    metrics = ControllerMetrics(registry)
    controller.tick()  # 100 told
    told = [d for d, a in rollout_status(store, "r1").rollout.assignments.items() if a.state is DeviceState.TOLD]
    store.record_reports([(d, _report(2, SHA), clock.now) for d in told])
    controller.abort("r1")  # 100 reverting and still on the version: every device's report read
    timings = []
    for _ in range(5):
        clock.now += 1
        controller.tick()  # the rollout rewritten: its 1,000 assignments read again
        started = time.perf_counter()
        metrics.refresh(controller)
        timings.append(time.perf_counter() - started)
    assert _value(registry, "orchestrator_fleet_left_on_version", rollout="r1") == len(told) == 100
    assert _value(registry, "orchestrator_fleet_devices", state="online") == len(names)
    assert statistics.median(timings) < 0.5, timings  # about 20 ms on 2 shared cores
