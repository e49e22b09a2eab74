"""Rollouts end to end, each on devices of its own: the real controller (``orchestrate fleet serve``, a
process the tests SIGKILL), its store and CLI, a real Mosquitto (SIGKILLed too), real agents on Triton
twins running the sample's packages, and in the first test one real device (an embedded Triton and
``orchestrate watch --fleet``) with client traffic.

Every test ends with each of its devices' state asserted and nothing lost: each device's events all
in the controller's store, numbered 1..n and acknowledged, and no version promoted twice on a device.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.journal import Action, Result
from orchestrator.delivery.signing import generate_keypair, load_private_key, load_trusted_keys
from orchestrator.fleet import topics
from orchestrator.fleet.documents import (
    EXPIRED,
    FORGED,
    INSTALL,
    MISADDRESSED,
    REPLAYED,
    UNTRUSTED,
    Desired,
    PackageRef,
    seal,
)
from orchestrator.fleet.lab import FleetLab, PackageServer
from orchestrator.fleet.lab_device import RealDevice
from orchestrator.fleet.rollout import DeviceState, Phase
from orchestrator.fleet.simulate import NANO, XAVIER, SimulatedFleet, standard_labels
from orchestrator.fleet.status import RolloutStatus
from orchestrator.fleet.transport import Link
from orchestrator.sample import MODEL, Variant, write_faulty_package
from tests.conftest import BuildKey
from tests.fleet.conftest import require_mosquitto, running

COUNT = 40  # indices 0 and 33 are hw=jetson-nano: 5 %
FAST_LINK = {"keepalive_s": 5, "min_backoff_s": 0.02, "max_backoff_s": 0.5}
GATE_S = 0.5
FOUR_WAVES = [{"percent": 10}, {"percent": 30}, {"percent": 60}, {"percent": 100}]
DEADLINES = {"ack_s": 20, "install_s": 40, "verify_slack_s": 20, "revert_s": 40}
PROMOTE_CHECK_REQUESTS = 40  # above what a promote's checks send: a fault after these shows in production only


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetLab]:
    """One broker and one controller process for the module; each test enrols devices of its own."""
    lab = FleetLab(tmp_path_factory.mktemp("lab"), gate_interval_s=GATE_S, mosquitto=require_mosquitto())
    try:
        lab.start_controller()
        yield lab
    finally:
        lab.close()


class Devices:
    """``count`` simulated devices named ``<group>-00000``..., labelled ``group=<group>``, enrolled in the lab
    (store and broker users); ``plan`` selects exactly them."""

    def __init__(self, lab: FleetLab, root: Path, build_key: BuildKey, group: str, count: int = COUNT,
                 traffic_period_s: float | None = None, extra: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.lab, self.group = lab, group
        self.sims = SimulatedFleet(root / group, count, labels_for=lambda i: {**standard_labels(i), "group": group},
                                   controller_keys=load_trusted_keys(lab.controller_keys),
                                   package_keys=[build_key.public], report_s=0.5, resend_s=1.0, workers=4,
                                   link_options=FAST_LINK, traffic_period_s=traffic_period_s, prefix=group).build()
        self.addresses = lab.enrol({**self.sims.labels(), **(extra or {})})
        self.sims.broker_for = self.addresses.__getitem__
        self.ids = self.sims.ids() + list(extra or {})

    def plan(self, rollout: str, package: PackageRef, **extra: Any) -> Path:
        raw = {"rollout": rollout, "model": MODEL, "package": package.to_json(), "selector": {"group": self.group},
               "spread": ["hw", "site"], "defaults": {"bake_s": 1, "max_unavailable": "50%"},
               "deadlines": DEADLINES, "waves": FOUR_WAVES,
               "gates": [{"name": "verified", "metric": "verified_ratio", "min": 0.95}], **extra}
        return self.lab.plan(raw)

    def start(self, plan: Path) -> None:
        """``orchestrate fleet rollout start PLAN``, as an operator runs it."""
        done = self.lab.cli("rollout", "start", str(plan))
        assert done.returncode == 0, done.stderr

    async def until(self, rollout: str, condition: Callable[[RolloutStatus], bool], timeout_s: float,
                    what: str) -> RolloutStatus:
        return await self.lab.until(rollout, condition, timeout_s, what)

    async def reported(self, version: int, ids: list[str] | None = None, timeout_s: float = 30) -> None:
        """Until the controller's store has every device's report serving ``version``."""
        await self.lab.reported(MODEL, version, ids if ids is not None else self.ids, timeout_s)

    async def settled(self, timeout_s: float = 20) -> None:
        """Until every device's last event is in the store and acknowledged."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = {r.id: r for r in self.lab.store.devices()}
            behind = [d for d in self.sims.ids() if records[d].acked < self.sims[d].agent.state.seq]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"events not all acknowledged: {behind[:5]}")
            await asyncio.sleep(0.2)

    def nothing_lost(self) -> None:
        """Every event each device numbered reached the store once, and no version was promoted twice."""
        records = {r.id: r for r in self.lab.store.devices()}
        for device in self.sims.ids():
            seqs = self.lab.store.event_seqs(device)
            assert seqs == list(range(1, len(seqs) + 1)) and records[device].acked == len(seqs), device
            promoted = [r.to_version for r in self.sims.journal(device).records
                        if r.action is Action.PROMOTE and r.result is Result.SUCCEEDED]
            assert len(promoted) == len(set(promoted)), (device, promoted)


def _final(status: RolloutStatus) -> bool:
    return status.rollout.phase.final and not status.states.get(DeviceState.REVERTING.value)


def _bounded(body: Callable[[], Any], timeout_s: float = 150) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), timeout_s)
    asyncio.run(bounded())


def test_a_good_release_goes_through_four_waves_to_every_device_and_a_real_one_serves_every_request(
        lab: FleetLab, ram: Path, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        site: PackageServer) -> None:
    keys = tmp_path / "package_keys"
    keys.mkdir()
    (keys / build_key.public.name).write_bytes(build_key.public.read_bytes())
    real_labels = {"group": "good", "site": "plant-a", "role": "line", "hw": XAVIER}
    devices = Devices(lab, ram, build_key, "good", extra={"good-real": real_labels})
    real = RealDevice(tmp_path / "real", "good-real", real_labels, XAVIER, devices.addresses["good-real"],
                      lab.controller_keys, keys)
    good = site.publish(packages[Variant.BETTER], "good.tar.gz")
    try:
        real.start()
        traffic = real.start_traffic()

        async def body() -> None:
            await devices.sims.start(connect_timeout_s=30)
            try:
                await devices.reported(1)
                devices.start(devices.plan("good", good))
                done = await devices.until("good", _final, 120, "the good release")
                assert done.rollout.phase is Phase.SUCCEEDED, done.rollout.reason
                assert done.states == {"verified": COUNT + 1} and done.on_version == COUNT + 1
                assert [w["devices"] for w in done.waves] == [5, 8, 12, 16]  # 10, 30, 60, 100 % of 41
                await devices.settled()
            finally:
                await devices.sims.stop()

        _bounded(body)
        assert set(devices.sims.served_versions().values()) == {2} and real.served() == 2
        traffic.close()
        served = {version for _, version, _ in traffic.answers}
        assert traffic.failures() == [] and served == {1, 2}, traffic.failures()[:3]
        devices.nothing_lost()
    finally:
        real.stop()


def test_a_release_bad_on_one_label_gets_that_label_blocked_and_the_rest_goes_on(
        lab: FleetLab, ram: Path, tmp_path: Path, build_key: BuildKey, site: PackageServer) -> None:
    devices = Devices(lab, ram, build_key, "label")
    nanos = set(devices.sims.with_label("hw", NANO))
    bad = site.publish(build_key.sign(write_faulty_package(tmp_path / "nano-nan", "nan", 0,
                                                           only_on_hardware=(NANO,))), "nano-nan.tar.gz")

    async def body() -> None:
        await devices.sims.start(connect_timeout_s=30)
        try:
            await devices.reported(1)
            devices.start(devices.plan("label", bad, on_label_failure="block"))
            done = await devices.until("label", _final, 120, "the nano-only release")
            assert done.rollout.phase is Phase.SUCCEEDED and done.rollout.blocked == (("hw", NANO),)
            states = {a.device: a.state for a in done.rollout.assignments.values()}
            assert {states[d] for d in nanos} <= {DeviceState.FAILED, DeviceState.REVERTED, DeviceState.SKIPPED}
            assert {s for d, s in states.items() if d not in nanos} == {DeviceState.VERIFIED}
            assert "concentrate on hw=jetson-nano" in " ".join(line for _, line in done.history)
            await devices.settled()
        finally:
            await devices.sims.stop()

    _bounded(body)
    served = devices.sims.served_versions()
    assert {served[d] for d in nanos} == {1} and {v for d, v in served.items() if d not in nanos} == {2}
    assert [b.selector for b in lab.store.blocks()] == [{"hw": NANO}]
    devices.nothing_lost()


def test_a_gate_failure_halts_and_every_updated_device_reverts_the_offline_ones_when_they_return(
        lab: FleetLab, ram: Path, tmp_path: Path, build_key: BuildKey, site: PackageServer) -> None:
    """Errors in production only (after the promote checks): the local gates pass it, the fleet's error-rate gate
    fails in the first wave. A tenth of the fleet is offline through it, two of them already serving the bad
    version: they keep serving it while away, and revert when they are back."""
    devices = Devices(lab, ram, build_key, "halt", traffic_period_s=0.25)
    bad = site.publish(build_key.sign(write_faulty_package(tmp_path / "errors", "errors", PROMOTE_CHECK_REQUESTS)),
                       "errors.tar.gz")
    gates = [{"name": "verified", "metric": "verified_ratio", "min": 0.95},
             {"name": "errors", "metric": "error_rate", "max": 0.05, "min_sample": 60}]
    away: list[str] = []

    async def body() -> None:
        await devices.sims.start(connect_timeout_s=30)
        try:
            await devices.reported(1)
            devices.start(devices.plan("halt", bad, gates=gates, defaults={"bake_s": 30, "max_unavailable": "50%"}))
            # The first two devices to serve the bad version vanish, with two not yet told.
            while len(serving := [d for d, v in devices.sims.served_versions().items() if v == 2]) < 2:
                await asyncio.sleep(0.05)
            told = {a.device for a in devices.lab.status("halt").rollout.assignments.values()
                    if a.state is not DeviceState.PENDING}
            away.extend(serving[:2] + [d for d in devices.sims.ids() if d not in told][:2])
            devices.sims.take_offline(away)
            halted = await devices.until("halt", lambda s: s.rollout.phase is Phase.HALTED, 60, "the halt")
            # The error-rate gate, or verified_ratio out of reach when the two away are failed first: either halts.
            assert "gate failed" in halted.rollout.reason
            await devices.until("halt", lambda s: s.states.get("reverting", 0) == 2, 60,
                                "every online device reverted; the two away still reverting")
            served = devices.sims.served_versions()
            assert {served[d] for d in away[:2]} == {2}  # still on it while away, retained revert waiting
            devices.sims.bring_online(away)
            # Settled once every device's revert event is in and its next report no longer shows the version.
            done = await devices.until("halt", lambda s: _final(s) and s.on_version == 0, 60,
                                       "the devices back reverted and reporting their fallback")
            assert done.left_on_version == 0
            assert set(done.states) <= {"reverted", "pending", "failed"}, done.states
            await devices.settled()
        finally:
            await devices.sims.stop()

    _bounded(body)
    assert set(devices.sims.served_versions().values()) == {1}
    devices.nothing_lost()


def _interrupted(lab: FleetLab, ram: Path, build_key: BuildKey, good: PackageRef, group: str,
                 when: Callable[[RolloutStatus], bool], interrupt: Callable[[], None], what: str) -> None:
    """A good release through its four waves, ``interrupt`` run once ``when`` holds: it still reaches every
    device, and nothing is lost."""
    devices = Devices(lab, ram, build_key, group)

    async def body() -> None:
        await devices.sims.start(connect_timeout_s=30)
        try:
            await devices.reported(1)
            devices.start(devices.plan(group, good))
            await devices.until(group, when, 60, what)
            interrupt()
            done = await devices.until(group, _final, 120, f"the release after {what}")
            assert done.rollout.phase is Phase.SUCCEEDED and done.states == {"verified": COUNT}
            await devices.settled()
        finally:
            await devices.sims.stop()

    _bounded(body)
    assert set(devices.sims.served_versions().values()) == {2}
    devices.nothing_lost()


def test_the_broker_killed_mid_wave_loses_nothing_and_the_rollout_completes(
        lab: FleetLab, ram: Path, build_key: BuildKey, packages: dict[Variant, Path], site: PackageServer) -> None:
    """SIGKILL, no persistence: the restarted broker holds nothing; the controller republishes every retained
    document from its store and the devices resend what was not acknowledged."""
    def kill_and_restart() -> None:
        lab.broker.kill()
        time.sleep(1.0)
        lab.broker.start()  # from this thread, not a pool's: the broker dies with the thread that started it

    _interrupted(lab, ram, build_key, site.publish(packages[Variant.BETTER], "good.tar.gz"), "broker",
                 lambda s: s.rollout.wave >= 1, kill_and_restart, "the broker's SIGKILL in the second wave")


def test_the_controller_killed_mid_wave_resumes_from_its_store(
        lab: FleetLab, ram: Path, build_key: BuildKey, packages: dict[Variant, Path], site: PackageServer) -> None:
    def kill_and_restart() -> None:
        lab.kill_controller()
        time.sleep(1.0)  # the devices go on; their events wait in the broker's session for it
        lab.start_controller()

    _interrupted(lab, ram, build_key, site.publish(packages[Variant.BETTER], "good.tar.gz"), "resume",
                 lambda s: s.rollout.wave >= 1 and s.states.get("applying", 0) > 0, kill_and_restart,
                 "the controller's SIGKILL while the second wave installs")


def test_forged_replayed_expired_and_misaddressed_documents_through_the_broker_change_nothing(
        lab: FleetLab, ram: Path, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        site: PackageServer) -> None:
    """Sent with the controller's own broker credentials (a stolen password): signed by another key, signed and
    then changed, an older serial, expired, another device's. Only the controller's key makes a device act, and
    only on a fresh document addressed to it."""
    devices = Devices(lab, ram, build_key, "docs", count=3)
    target, other = devices.ids[0], devices.ids[1]
    good = site.publish(packages[Variant.BETTER], "good.tar.gz")
    bad = site.publish(build_key.sign(write_faulty_package(tmp_path / "nan", "nan", PROMOTE_CHECK_REQUESTS)),
                       "nan.tar.gz")
    key = load_private_key(lab.controller_key)
    generate_keypair(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    stranger = load_private_key(tmp_path / "stranger.key")
    password = (lab.root / "keys" / "controller.mqtt").read_text().strip()
    intruder = Link(lab.address(lab.broker_files.controller_user, password), "intruder", [], **FAST_LINK)

    def desired(device: str, serial: int, expires_in: float = 600.0) -> dict[str, Any]:
        now = time.time()
        return Desired(device, serial, now, now + expires_in, MODEL, INSTALL, bad, "intrusion").to_json()

    sent_reasons: list[str] = []

    async def ignore(message: object) -> None:
        pass

    async def body() -> None:
        await devices.sims.start(connect_timeout_s=30)
        try:
            await devices.reported(1)
            devices.start(devices.plan("docs", good, waves=[{"percent": 100}]))
            await devices.until("docs", _final, 60, "the release")
            applied = max(r.serial or 0 for r in lab.store.events(target) if r.rollout == "docs")
            tampered = json.loads(seal(desired(target, applied + 40), key))
            tampered["doc"]["package"]["url"] = "http://127.0.0.1:9/elsewhere.tar.gz"  # after it was signed
            sent = {UNTRUSTED: seal(desired(target, applied + 10), stranger),
                    FORGED: json.dumps(tampered).encode(),
                    REPLAYED: seal(desired(target, applied - 1), key),
                    EXPIRED: seal(desired(target, applied + 20, expires_in=-60), key),
                    MISADDRESSED: seal(desired(other, applied + 30), key)}
            async with running((intruder, ignore)):
                for payload in sent.values():
                    await intruder.publish(topics.desired(target, MODEL), payload, retain=False)

            def refusals() -> list[str]:
                return [e.body.get("data", {}).get("reason", "") for e in lab.store.events(target, limit=1000)
                        if e.kind == "refused"]
            deadline = time.monotonic() + 20
            while sorted(refusals()) != sorted(sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert sorted(refusals()) == sorted(sent), refusals()
            sent_reasons.extend(sent)
            await devices.settled()
        finally:
            await devices.sims.stop()

    _bounded(body)
    assert set(devices.sims.served_versions().values()) == {2}
    refused = [r for r in devices.sims.journal(target).records if r.result is Result.REFUSED]
    assert sorted(r.details["reason"] for r in refused) == sorted(sent_reasons), refused
    devices.nothing_lost()
