"""Simulated devices without a broker: each its own repository on the twin, the real use cases and watcher
on it, and the sample's nano-only faults bad on the nano devices only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.core.policy import parse_watch_policy
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.watcher import ModelWatcher
from orchestrator.errors import CandidateRejected
from orchestrator.fleet.simulate import NANO, NOWHERE, SimulatedFleet, Traffic, device_id, standard_labels
from orchestrator.sample import MODEL, Variant, write_faulty_package
from orchestrator.store.metafile import VersionStatus
from orchestrator.store.repository import ModelStore
from orchestrator.triton.twin import TritonTwin, VirtualClock
from orchestrator.usecases.orchestrator import Orchestrator
from tests.conftest import BuildKey

PROMOTE_CHECK_REQUESTS = 40  # above what a promote's checks send (warm-up and the golden set in batches)


def labels(index: int) -> dict[str, str]:
    return {**standard_labels(index), "hw": NANO if index == 0 else "jetson-xavier-nx"}


@pytest.fixture
def fleet(tmp_path: Path, build_key: BuildKey) -> SimulatedFleet:
    return SimulatedFleet(tmp_path / "fleet", 3, labels_for=labels, package_keys=[build_key.public]).build()


def test_standard_labels_make_about_three_percent_nanos() -> None:
    hardware = [standard_labels(i)["hw"] for i in range(1000)]
    assert hardware.count(NANO) == 31
    assert {standard_labels(i)["site"] for i in range(9)} == {"plant-a", "plant-b", "plant-c"}
    assert len({(standard_labels(i)["site"], standard_labels(i)["role"]) for i in range(9)}) == 9


def test_each_device_serves_v1_from_its_own_folders_sharing_the_image(fleet: SimulatedFleet) -> None:
    assert list(fleet.devices) == [device_id(i) for i in range(3)]
    assert fleet.served_versions() == dict.fromkeys(fleet.devices, 1)
    nodes = {d.id: (d.repository / MODEL / "1" / "model.onnx").stat().st_ino for d in fleet.devices.values()}
    assert len(set(nodes.values())) == 1
    configs = {(d.repository / MODEL / "config.pbtxt").stat().st_ino for d in fleet.devices.values()}
    assert len(configs) == 3
    device = fleet[device_id(0)]
    assert device.hardware == NANO and device.backend.hardware == NANO
    assert [p.name for p in (device.state / "trusted_keys").iterdir()] == ["builder.pub"]
    assert device.store().status(1) is VersionStatus.VERIFIED


def test_a_good_package_promotes_everywhere_and_a_nano_only_nan_is_refused_on_the_nano(
        fleet: SimulatedFleet, packages: dict[Variant, Path], build_key: BuildKey, tmp_path: Path) -> None:
    for device in fleet:
        assert device.orchestrator.import_package(packages[Variant.BETTER]).version == 2
        assert device.orchestrator.promote(MODEL, 2).changed
    assert fleet.served_versions() == dict.fromkeys(fleet.devices, 2)
    bad = build_key.sign(write_faulty_package(tmp_path / "nano-nan", "nan", 0, only_on_hardware=(NANO,)))
    for device in fleet:
        assert device.orchestrator.import_package(bad).version == 3
        if device.hardware == NANO:
            with pytest.raises(CandidateRejected):
                device.orchestrator.promote(MODEL, 3)
            assert device.store().status(3) is VersionStatus.FAILED
        else:
            assert device.orchestrator.promote(MODEL, 3).changed
    assert fleet.served_versions() == {device_id(0): 2, device_id(1): 3, device_id(2): 3}
    assert [r.result for r in fleet.journal(device_id(0)).records if r.action == "promote"][-1] == "failed"


def test_a_nano_only_fault_after_the_checks_is_rolled_back_by_the_watcher_on_the_nano(
        tmp_path: Path, build_key: BuildKey) -> None:
    clock = VirtualClock()

    def watcher_for(ctx: Orchestrator, store: ModelStore, twin: TritonTwin) -> ModelWatcher:
        return ModelWatcher(ctx, store, parse_watch_policy({"grace_s": 0}), WatchMetrics(CollectorRegistry()),
                            NOWHERE, clock=clock, triton=twin, scrape=lambda url, timeout_s: None)

    fleet = SimulatedFleet(tmp_path / "fleet", 3, labels_for=labels, package_keys=[build_key.public],
                           watcher_for=watcher_for).build()
    bad = build_key.sign(write_faulty_package(tmp_path / "nano-errors", "errors", PROMOTE_CHECK_REQUESTS,
                                              only_on_hardware=(NANO,)))
    for device in fleet:
        device.orchestrator.import_package(bad)
        assert device.orchestrator.promote(MODEL, 2).changed  # the checks pass everywhere
    rules: dict[str, list[str]] = {ident: [] for ident in fleet.devices}
    for _ in range(60):
        for device in fleet:
            assert isinstance(device.watcher, ModelWatcher)
            rules[device.id] += [anomaly.rule for anomaly in device.watcher.tick()]
        clock.sleep(0.05)
    assert "probe_errors" in rules[device_id(0)]
    assert rules[device_id(1)] == rules[device_id(2)] == []
    assert fleet.served_versions() == {device_id(0): 1, device_id(1): 2, device_id(2): 2}
    assert fleet[device_id(0)].store().status(2) is VersionStatus.QUARANTINED
    [rollback] = [r for r in fleet.journal(device_id(0)).records if r.action == "rollback" and r.result == "succeeded"]
    assert (rollback.actor, rollback.from_version, rollback.to_version) == ("watch", 2, 1)


def test_client_traffic_moves_each_device_s_counters(fleet: SimulatedFleet, build_key: BuildKey,
                                                    tmp_path: Path) -> None:
    bad = build_key.sign(write_faulty_package(tmp_path / "nano-errors", "errors", PROMOTE_CHECK_REQUESTS,
                                              only_on_hardware=(NANO,)))
    for device in fleet:
        device.orchestrator.import_package(bad)
        device.orchestrator.promote(MODEL, 2)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Traffic(list(fleet.devices.values()), period_s=0.01, tick_s=0.001).run(stop))
        await asyncio.sleep(0.8)
        stop.set()
        await task

    asyncio.run(run())
    counters = {ident: device.counters for ident, device in fleet.devices.items()}
    assert all(c.requests > PROMOTE_CHECK_REQUESTS for c in counters.values()), counters
    assert counters[device_id(0)].errors == counters[device_id(0)].requests - PROMOTE_CHECK_REQUESTS
    assert counters[device_id(1)].errors == counters[device_id(2)].errors == 0
    assert counters[device_id(1)].last_version == 2
