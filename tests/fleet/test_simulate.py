"""Simulated devices (``orchestrator.fleet.simulate``) against a real Mosquitto: the real agents on Triton twins
connect, report, take signed install documents, and a package bad on the Jetson Nanos only is refused there only.

The controller is played by a plain Link with the controller's user; packages come over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.delivery.signing import generate_keypair, key_id, load_private_key
from orchestrator.errors import FleetError
from orchestrator.fleet import topics
from orchestrator.fleet.documents import INSTALL, Desired, PackageRef, seal
from orchestrator.fleet.lab import PackageServer
from orchestrator.fleet.lab_shards import ShardedFleet
from orchestrator.fleet.simulate import NANO, SimulatedFleet
from orchestrator.fleet.transport import Link, Message
from orchestrator.sample import MODEL, Variant, write_faulty_package
from tests.conftest import BuildKey
from tests.fleet.conftest import Broker, run, running

COUNT = 200
FAST_LINK = {"keepalive_s": 5, "min_backoff_s": 0.02, "max_backoff_s": 0.5}


class Controller:
    """The controller's side: signs and publishes desired documents; keeps each device's events once (by
    number), its last report and presence, as they arrive (a test polls these, never the whole inbox)."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.link = Link(broker.controller, client_id, topics.CONTROLLER_FILTERS, **FAST_LINK)  # type: ignore[arg-type]
        self.serials: dict[str, int] = {}
        self.received: dict[str, dict[int, dict[str, Any]]] = {}  # device -> seq -> event
        self.reports: dict[str, dict[str, Any]] = {}
        self.presences: dict[str, bytes] = {}

    async def __call__(self, message: Message) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None:
            return
        device, kind = parsed
        if kind is topics.Kind.EVENTS:
            event = json.loads(message.payload)
            self.received.setdefault(device, {}).setdefault(event["seq"], event)
        elif kind is topics.Kind.REPORT:
            self.reports[device] = json.loads(message.payload)
        elif kind is topics.Kind.PRESENCE:
            self.presences[device] = message.payload

    @property
    def trusted(self) -> dict[str, Any]:
        public = self.key.public_key()
        return {key_id(public): public}

    async def install(self, devices: list[str], package: PackageRef, rollout: str) -> None:
        now = time.time()

        async def one(device: str) -> None:
            self.serials[device] = self.serials.get(device, 0) + 1
            doc = Desired(device, self.serials[device], now, now + 600, MODEL, INSTALL, package, rollout, bake_s=0.5)
            await self.link.publish(topics.desired(device, MODEL), seal(doc.to_json(), self.key), retain=True)

        await asyncio.gather(*(one(device) for device in devices))

    def events(self, device: str, rollout: str | None = None) -> list[dict[str, Any]]:
        found = sorted(self.received.get(device, {}).values(), key=lambda e: e["seq"])
        return [e for e in found if rollout is None or e["rollout"] == rollout]

    def outcome(self, device: str, rollout: str) -> str | None:
        """The last of serving / verified / failed the device sent for ``rollout``."""
        kinds = [e["kind"] for e in self.events(device, rollout) if e["kind"] in ("serving", "verified", "failed")]
        return kinds[-1] if kinds else None

    def served(self, device: str) -> int | None:
        return self.reports.get(device, {}).get("models", {}).get(MODEL, {}).get("served")

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s:g} s: {what}")
            await asyncio.sleep(0.1)


def test_two_hundred_agents_install_a_good_release_and_refuse_a_nano_only_bad_one_on_the_nanos(
        broker: Broker, tmp_path: Path, ram: Path, build_key: BuildKey, packages: dict[Variant, Path],
        site: PackageServer) -> None:
    ctl = Controller(broker, "ctl-simulate-200")
    fleet = SimulatedFleet(ram / "fleet", COUNT, controller_keys=ctl.trusted, package_keys=[build_key.public],
                           report_s=10.0, resend_s=30.0, workers=4, link_options=FAST_LINK).build()
    addresses = broker.devices(fleet.ids())
    fleet.broker_for = addresses.__getitem__
    nanos = set(fleet.with_label("hw", NANO))
    assert len(nanos) == 7  # indices 0, 33, ..., 198
    good = site.publish(packages[Variant.BETTER], "good.tar.gz")
    bad = site.publish(build_key.sign(write_faulty_package(tmp_path / "nano-nan", "nan", 0,
                                                           only_on_hardware=(NANO,))), "nano-nan.tar.gz")
    ids = fleet.ids()
    # The bad release goes to every nano and to one other device in ten: what it does there shows as well as
    # on all 193, at a tenth of the installs (each costs ~65 ms of CPU on this machine's GIL).
    told = sorted(nanos | set(ids[5::10]))
    timings: dict[str, float] = {}

    async def body() -> None:
        async with running((ctl.link, ctl)):
            started = time.monotonic()
            await fleet.start(connect_timeout_s=20)
            await ctl.wait_for(lambda: all(ctl.served(d) == 1 for d in ids), 20, "every device reports v1")
            timings["connected and reported"] = time.monotonic() - started
            assert all(ctl.presences[d] == b"online" for d in ids)
            assert ctl.reports[ids[0]]["labels"]["hw"] == NANO

            started = time.monotonic()
            await ctl.install(ids, good, "good")
            await ctl.wait_for(lambda: all(ctl.outcome(d, "good") == "verified" for d in ids), 60,
                               "every device verifies the good release")
            timings["good release verified everywhere"] = time.monotonic() - started
            assert fleet.served_versions() == dict.fromkeys(ids, 2)

            started = time.monotonic()
            await ctl.install(told, bad, "nano-bad")
            await ctl.wait_for(lambda: all(ctl.outcome(d, "nano-bad") in ("failed", "verified") for d in told), 60,
                               "every device told ends the nano-only release")
            timings[f"nano-only release settled on {len(told)}"] = time.monotonic() - started
            for device in told:
                failed = [e for e in ctl.events(device, "nano-bad") if e["kind"] == "failed"]
                if device in nanos:
                    assert [e["data"]["cause"] for e in failed] == ["promote"], device
                else:
                    assert failed == [] and ctl.outcome(device, "nano-bad") == "verified", device
            await fleet.stop()
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"offline" for d in ids), 10, "every will")
        assert fleet.served_versions() == {d: 3 if d in told and d not in nanos else 2 for d in ids}
        assert fleet.failures == {}
        for device in ids:
            seqs = [e["seq"] for e in ctl.events(device)]
            assert sorted(seqs) == list(range(1, max(seqs) + 1)), device  # every event, none twice

    run(body(), timeout_s=150)
    print(f"{COUNT} devices built in {fleet.build_s:.1f} s; "
          + "; ".join(f"{k} in {v:.1f} s" for k, v in timings.items()))


def test_devices_taken_offline_vanish_their_wills_fire_and_they_come_back(
        broker: Broker, tmp_path: Path, build_key: BuildKey) -> None:
    ctl = Controller(broker, "ctl-simulate-offline")
    fleet = SimulatedFleet(tmp_path / "fleet", 4, controller_keys=ctl.trusted, package_keys=[build_key.public],
                           report_s=1.0, link_options=FAST_LINK, prefix="offline").build()
    fleet.broker_for = broker.devices(fleet.ids()).__getitem__
    away = fleet.ids()[:2]

    async def body() -> None:
        async with running((ctl.link, ctl)):
            await fleet.start(connect_timeout_s=10)
            await ctl.wait_for(lambda: all(ctl.presences.get(d) == b"online" for d in fleet.ids()), 5, "online")
            fleet.take_offline(away)
            # No DISCONNECT reached the broker: it published their wills itself.
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"offline" for d in away), 5, "the wills")
            ctl.reports.clear()
            await asyncio.sleep(1.5)  # longer than the links' backoff and a report period: they stay away
            assert all(not fleet[d].connected for d in away)
            assert all(ctl.presences[d] == b"online" for d in fleet.ids()[2:])
            assert set(ctl.reports) == set(fleet.ids()[2:])
            fleet.bring_online(away)
            await fleet.wait_connected(away, 10)
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"online" and d in ctl.reports for d in away), 5,
                               "back online, reporting")
            await fleet.stop()

    run(body(), timeout_s=40)


def test_devices_in_two_processes_install_go_offline_come_back_and_stop(
        broker: Broker, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        site: PackageServer) -> None:
    ctl = Controller(broker, "ctl-simulate-shards")
    keys = tmp_path / "controller_keys"
    keys.mkdir()
    generate_keypair(tmp_path / "controller.key", keys / "controller.pub")
    ctl.key = load_private_key(tmp_path / "controller.key")  # type: ignore[assignment]
    fleet = ShardedFleet(tmp_path / "fleet", 5, 2, keys, build_key.public.parent, report_s=1.0,
                         link_options=FAST_LINK, prefix="shard").build()
    ids = fleet.ids()
    assert sorted(ids) == ["shard0-00000", "shard0-00001", "shard1-00000", "shard1-00001", "shard1-00002"]
    assert fleet.labels()["shard1-00000"]["hw"] == NANO and len(fleet.pids()) == 2
    good = site.publish(packages[Variant.BETTER], "shards-good.tar.gz")
    away = ["shard0-00001", "shard1-00002"]

    async def body() -> None:
        async with running((ctl.link, ctl)):
            await asyncio.to_thread(fleet.start, broker.devices(ids), 20)
            await ctl.wait_for(lambda: all(ctl.served(d) == 1 for d in ids), 20, "every device reports v1")
            await ctl.install(ids, good, "good")
            await ctl.wait_for(lambda: all(ctl.outcome(d, "good") == "verified" for d in ids), 60, "verified")
            assert await asyncio.to_thread(fleet.served_versions) == dict.fromkeys(ids, 2)
            await asyncio.to_thread(fleet.take_offline, away)
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"offline" for d in away), 5, "the wills")
            await asyncio.to_thread(fleet.bring_online, away)
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"online" for d in away), 10, "back online")
            assert await asyncio.to_thread(fleet.rollback_seconds, ids) == []  # nothing rolled back
            assert await asyncio.to_thread(fleet.failures) == {}
            await asyncio.to_thread(fleet.stop)
            await ctl.wait_for(lambda: all(ctl.presences[d] == b"offline" for d in ids), 10, "every will")

    run(body(), timeout_s=90)
    assert fleet.children == []
    for device in ids:
        seqs = [e["seq"] for e in ctl.events(device)]
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), device


def test_a_simulating_process_that_dies_is_named_by_the_next_command(tmp_path: Path, build_key: BuildKey) -> None:
    keys = tmp_path / "controller_keys"
    keys.mkdir()
    generate_keypair(tmp_path / "controller.key", keys / "controller.pub")
    fleet = ShardedFleet(tmp_path / "fleet", 2, 2, keys, build_key.public.parent, prefix="doomed").build()
    try:
        with pytest.raises(FleetError, match=r"doomed0: .*failed: KeyError"):
            fleet.children[0].send("offline", ["no-such-device"])
            fleet.children[0].reply("offline")
        fleet.children[1].process.kill()
        fleet.children[1].process.join()
        with pytest.raises(FleetError, match=r"devices doomed1: the process exited \(-9\) (before|during) served"):
            fleet.served_versions()
    finally:
        fleet.stop()
    assert fleet.children == []
