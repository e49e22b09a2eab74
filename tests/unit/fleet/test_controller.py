"""The controller on its store, without a broker: signed plans only, events stored once, one step per tick,
documents signed for their device, a restart that resumes, a block as a signed notice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.delivery.signing import generate_keypair, key_id, load_trusted_keys
from orchestrator.errors import FleetError, PlanRejected
from orchestrator.fleet import topics
from orchestrator.fleet.controller import Controller, Outgoing
from orchestrator.fleet.documents import accept_desired, open_sealed, parse_notice
from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.plan_file import sign_plan
from orchestrator.fleet.store import FleetStore

from .planning import raw_plan

MODEL = "classifier"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "release_keys"
    folder.mkdir()
    generate_keypair(tmp_path / "release.key", folder / "release.pub")
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    controller = Ed25519PrivateKey.generate()
    return {"release": tmp_path / "release.key", "other": tmp_path / "other.key", "trusted": load_trusted_keys(folder),
            "controller": controller, "device_trusts": {key_id(controller.public_key()): controller.public_key()}}


def _controller(tmp_path: Path, keys: dict[str, Any], clock: Clock) -> Controller:
    return Controller(FleetStore(tmp_path / "fleet.db"), keys["controller"], keys["trusted"], clock)


def _report(served: int, sha: str | None = None, requests: int = 0, errors: int = 0) -> bytes:
    versions = {str(served): {"sha256": sha, "requests": requests, "errors": errors, "latency_ns": 0, "rollbacks": 0}}
    return json.dumps({"models": {MODEL: {"served": served, "served_sha256": sha, "versions": versions}}}).encode()


def _plan_file(tmp_path: Path, key: Path, **changes: Any) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw_plan(**changes)))
    sign_plan(path, key)
    return path


def _enrol(controller: Controller, count: int) -> list[str]:
    names = [f"cam-{i:02d}" for i in range(count)]
    controller.store.enrol({d: {"hw": "nano" if i == 0 else "nx"} for i, d in enumerate(names)})
    controller.ingest([(topics.report(d), _report(1)) for d in names] +
                      [(topics.presence(d), b"online") for d in names])
    return names


class Device:
    """Answers like an agent would: numbered events about the document it got."""

    def __init__(self, name: str, trusted: dict[str, Any]) -> None:
        self.name, self.trusted, self.seq, self.serial = name, trusted, 0, 0

    def read(self, outgoing: list[Outgoing]) -> Any:
        mine = [o for o in outgoing if o.topic == topics.desired(self.name, MODEL)]
        if not mine:
            return None
        desired = accept_desired(open_sealed(mine[-1].payload, self.trusted), self.name, self.serial, 1_000_000.0)
        self.serial = desired.serial
        return desired

    def event(self, kind: str, rollout: str = "r1", version: int | None = 2, detail: str = "") -> tuple[str, bytes]:
        self.seq += 1
        body = {"device": self.name, "seq": self.seq, "at": 1_000_000.0, "kind": kind, "model": MODEL,
                "rollout": rollout, "serial": self.serial, "version": version, "detail": detail}
        return topics.events(self.name), json.dumps(body).encode()


def test_a_plan_must_be_signed_by_a_release_key(tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    _enrol(controller, 3)
    unsigned = tmp_path / "unsigned.yaml"
    unsigned.write_text(yaml.safe_dump(raw_plan()))
    with pytest.raises(PlanRejected, match="unsigned"):
        controller.start(unsigned)
    with pytest.raises(PlanRejected, match="unknown key"):
        controller.start(_plan_file(tmp_path, keys["other"]))  # the package key is not a release key
    tampered = _plan_file(tmp_path, keys["release"])
    tampered.write_text(tampered.read_text().replace("percent: 10", "percent: 50"))
    with pytest.raises(PlanRejected, match="does not match"):
        controller.start(tampered)
    assert controller.store.rollout_ids() == []


def test_a_rollout_tells_its_first_wave_with_signed_documents_for_each_device(tmp_path: Path,
                                                                               keys: dict[str, Any]) -> None:
    clock = Clock()
    controller = _controller(tmp_path, keys, clock)
    names = _enrol(controller, 10)
    rollout = controller.start(_plan_file(tmp_path, keys["release"]))
    assert len(rollout.assignments) == 10
    outgoing = controller.tick()
    desired = [o for o in outgoing if "/desired/" in o.topic]
    assert len(desired) == 1 and desired[0].retain
    (told,) = [n for n in names if desired[0].topic == topics.desired(n, MODEL)]
    doc = Device(told, keys["device_trusts"]).read(outgoing)
    assert doc.intent == "install" and doc.package.sha256 == rollout.plan.package.sha256 and doc.bake_s == 100
    # Another device cannot use it: it is addressed.
    other = next(n for n in names if n != told)
    with pytest.raises(Exception, match="misaddressed"):
        accept_desired(open_sealed(desired[0].payload, keys["device_trusts"]), other, 0, clock.now)
    controller.published(outgoing)
    assert controller.pending() == []
    assert len([o for o in controller.everything() if "/desired/" in o.topic]) == 1  # republished after a broker loss


def test_events_are_stored_once_and_acknowledged_contiguously(tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    (name,) = _enrol(controller, 1)
    device = Device(name, keys["device_trusts"])
    first, second, third = (device.event("journal") for _ in range(3))
    acks = controller.ingest([first, third])
    assert [json.loads(a.payload) for a in acks] == [{"upto": 1}]  # 2 is missing: 3 waits
    acks = controller.ingest([second, second, first])  # duplicates after a reconnect
    assert [json.loads(a.payload) for a in acks] == [{"upto": 3}] and acks[0].topic == topics.ack(name)
    assert controller.store.event_seqs(name) == [1, 2, 3]


def test_a_later_event_arriving_first_waits_for_the_ones_before_it(tmp_path: Path, keys: dict[str, Any]) -> None:
    """After a broker restart a device's ``verified`` may arrive before its resent ``applying`` and ``serving``:
    fed in arrival order it would be dropped (not baking yet) and the device failed at its deadline."""
    clock = Clock()
    controller = _controller(tmp_path, keys, clock)
    names = _enrol(controller, 1)
    controller.start(_plan_file(tmp_path, keys["release"], waves=[{"percent": 100}],
                                gates=[{"metric": "verified_ratio", "min": 1.0}]))
    outgoing = controller.tick()
    device = Device(names[0], keys["device_trusts"])
    device.read(outgoing)
    applying, serving, verified = device.event("applying"), device.event("serving"), device.event("verified")
    controller.ingest([verified])
    controller.tick()
    with controller.store.transaction() as db:
        assert controller.store.load_rollout(db, "r1", build_plan).assignments[names[0]].state.value == "told"
    controller.ingest([serving, applying])
    controller.tick()
    with controller.store.transaction() as db:
        rollout = controller.store.load_rollout(db, "r1", build_plan)
    assert rollout.assignments[names[0]].state.value == "verified" and rollout.phase.value == "succeeded"


def test_events_a_full_outbox_dropped_are_acknowledged_past_once_the_report_says_so(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    (name,) = _enrol(controller, 1)
    device = Device(name, keys["device_trusts"])
    events = [device.event("journal") for _ in range(6)]
    acks = controller.ingest(events[4:])  # 1-4 were dropped on the device: they never come
    assert [json.loads(a.payload) for a in acks] == [{"upto": 0}]
    report = json.loads(_report(1))
    report["outbox"] = {"pending": 2, "dropped": 4, "first": 5}
    controller.ingest([(topics.report(name), json.dumps(report).encode())])
    acks = controller.ingest(events[4:])  # resent: now contiguous after the gap
    assert [json.loads(a.payload) for a in acks] == [{"upto": 6}]
    # Without a drop, a gap is events still on their way: nothing is skipped.
    report["outbox"] = {"pending": 1, "dropped": 0, "first": 9}
    controller.ingest([(topics.report(name), json.dumps(report).encode())])
    assert [r.acked for r in controller.store.devices()] == [6]


def test_messages_from_strangers_and_garbage_are_ignored(tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    (name,) = _enrol(controller, 1)
    assert controller.ingest([(topics.events("stranger"), b'{"seq": 1}'), (topics.events(name), b"not json"),
                              (topics.events(name), b'{"kind": "x"}'), ("elsewhere/topic", b"{}")]) == []
    assert controller.store.event_seqs(name) == [] and not controller.store.known("stranger")


def _run_wave(controller: Controller, clock: Clock, devices: dict[str, Device], outgoing: list[Outgoing],
              bad: set[str] = frozenset()) -> None:
    for name, device in devices.items():
        if device.read(outgoing) is None:
            continue
        messages = [device.event("applying")]
        if name in bad:
            messages.append(device.event("failed", detail="golden set: outputs contain NaN"))
        else:
            messages += [device.event("serving"), (topics.report(name), _report(2, "ab" * 32, 1000))]
        controller.ingest(messages)


def test_a_failing_wave_halts_reverts_and_a_restarted_controller_goes_on(tmp_path: Path,
                                                                          keys: dict[str, Any]) -> None:
    clock = Clock()
    controller = _controller(tmp_path, keys, clock)
    names = _enrol(controller, 20)
    controller.start(_plan_file(tmp_path, keys["release"], waves=[{"percent": 50}, {"percent": 100}],
                                gates=[{"metric": "verified_ratio", "min": 1.0}]))
    devices = {n: Device(n, keys["device_trusts"]) for n in names}
    outgoing = controller.tick()
    controller.published(outgoing)
    told = [n for n, d in devices.items() if any(o.topic == topics.desired(n, MODEL) for o in outgoing)]
    assert len(told) == 10
    bad = next(n for n in told if n != "cam-00")  # hw=nx, like most: no label to blame
    _run_wave(controller, clock, devices, outgoing, bad={bad})
    controller.store.close()

    clock.now += 1
    restarted = _controller(tmp_path, keys, clock)  # killed and started again: everything is in the store
    reverts = restarted.tick()
    docs = {o.topic: devices[n].read(reverts) for n in told for o in reverts if o.topic == topics.desired(n, MODEL)}
    assert len(docs) == 10 and {d.intent for d in docs.values()} == {"revert"} and {d.revert_to for d in
                                                                                    docs.values()} == {1}
    with restarted.store.transaction() as db:
        rollout = restarted.store.load_rollout(db, "r1", build_plan)
    assert rollout.phase.value == "halted" and "verified" in rollout.reason
    history = " ".join(line for _, line in restarted.store.history("r1"))
    assert "outputs contain NaN" in history and "10 devices told to revert" in history
    assert "concentrate" not in history
    # An answer to the old install document changes nothing now.
    restarted.ingest([devices[next(n for n in told if n != bad)].event("verified")])
    restarted.ingest([devices[n].event("reverted", version=1) for n in told])
    restarted.tick()
    with restarted.store.transaction() as db:
        rollout = restarted.store.load_rollout(db, "r1", build_plan)
    assert {a.state.value for a in rollout.assignments.values() if a.device in told} == {"reverted"}


def test_one_rollout_per_model_at_a_time_and_operator_commands(tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    _enrol(controller, 4)
    controller.start(_plan_file(tmp_path, keys["release"]))
    with pytest.raises(FleetError, match="still going"):
        controller.start(_plan_file(tmp_path, keys["release"], rollout="r2"))
    assert controller.pause("r1").phase.value == "paused"
    assert controller.resume("r1").phase.value == "running"
    with pytest.raises(FleetError, match="not paused"):
        controller.resume("r1")
    assert controller.abort("r1").phase.value == "aborted"
    with pytest.raises(FleetError, match="aborted already"):
        controller.abort("r1")
    with pytest.raises(FleetError, match="no rollout 'nope'"):
        controller.pause("nope")


def test_a_block_is_a_signed_notice_with_every_block_in_force(tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    first = controller.block({"hw": "nano"}, MODEL, "ab" * 32, "bad on nano")
    controller.block({"site": "s2"}, MODEL, "cd" * 32, "bad camera")
    (notice,) = [o for o in controller.pending() if o.topic == topics.FLEET_NOTICE]
    parsed = parse_notice(open_sealed(notice.payload, keys["device_trusts"]))
    assert parsed.serial == 2 and [b.selector for b in parsed.blocks] == [{"hw": "nano"}, {"site": "s2"}]
    controller.published([notice])
    controller.unblock(first.id)
    (notice,) = [o for o in controller.pending() if o.topic == topics.FLEET_NOTICE]
    assert [b.selector for b in parse_notice(open_sealed(notice.payload, keys["device_trusts"])).blocks] == [
        {"site": "s2"}]
    with pytest.raises(FleetError, match="no block"):
        controller.unblock(first.id)


def test_a_retired_device_leaves_the_fleet_its_topics_are_cleared_and_its_record_stays(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    controller = _controller(tmp_path, keys, Clock())
    names = _enrol(controller, 4)
    controller.start(_plan_file(tmp_path, keys["release"]))
    outgoing = controller.tick()
    controller.published(outgoing)
    (told,) = [n for n in names if any(o.topic == topics.desired(n, MODEL) for o in outgoing)]
    with pytest.raises(FleetError, match=f"{told} is still driven by rollout r1: let it finish, or abort it"):
        controller.store.retire([told], "broken lens")
    with pytest.raises(FleetError, match="not enrolled: cam-99"):
        controller.store.retire([told, "cam-99"], "broken lens")
    device = Device(told, keys["device_trusts"])
    device.read(outgoing)
    controller.abort("r1")
    reverts = controller.tick()
    controller.published(reverts)
    assert device.read(reverts).intent == "revert"
    controller.ingest([device.event("reverted", version=1)])
    controller.tick()
    # Told to revert, it reverted: the rollout no longer drives it.
    cleared = controller.store.retire([told], "broken lens")
    assert sorted(cleared) == sorted([topics.report(told), topics.presence(told), topics.desired(told, MODEL)])
    assert told not in [d.id for d in controller.store.devices()] and not controller.store.known(told)
    (gone,) = controller.store.retired()
    assert (gone.id, gone.reason, gone.labels) == (told, "broken lens", {"hw": "nano" if told == "cam-00" else "nx"})
    assert len(controller.store.history("r1")) > 0 and controller.store.events(told) != []
    clears = [o for o in controller.pending() if o.payload == b""]
    assert sorted(o.topic for o in clears) == sorted(cleared) and all(o.retain for o in clears)
    assert all(o.topic != topics.desired(told, MODEL) for o in controller.everything())
    controller.published(clears)
    assert [o for o in controller.pending() if o.payload == b""] == []
    # What it still sends is ignored, and a new rollout does not select it.
    controller.ingest([(topics.report(told), _report(1)), (topics.report(told), b"")])
    assert controller.start(_plan_file(tmp_path, keys["release"], rollout="r2")).assignments.keys() == \
        set(names) - {told}
    # Enrolled again: back in the fleet, no longer retired.
    controller.store.enrol({told: {"hw": "nx"}})
    assert controller.store.known(told) and controller.store.retired() == []


def test_views_follow_every_new_report_and_relabel_though_unchanged_ones_are_parsed_once(
        tmp_path: Path, keys: dict[str, Any]) -> None:
    clock = Clock()
    controller = _controller(tmp_path, keys, clock)
    names = _enrol(controller, 3)
    first = controller.store.views(MODEL)
    assert {v.served for v in first.values()} == {1}
    again = controller.store.views(MODEL)
    assert again == first and controller.store.devices()[0].report is controller.store.devices()[0].report
    clock.now += 1
    controller.ingest([(topics.report(names[0]), _report(2, "b" * 64, requests=5))])
    controller.store.enrol({names[1]: {"hw": "orin"}})  # relabelled, as `fleet enrol` does
    views = controller.store.views(MODEL)
    assert (views[names[0]].served, views[names[0]].served_sha256, views[names[0]].usage[2].requests) == \
        (2, "b" * 64, 5)
    assert views[names[1]].labels == {"hw": "orin"} and views[names[2]] == first[names[2]]
