"""The fleet agent's outbox, acknowledgements, presence and fleet notices (blocks), on a twin-backed device."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.core.journal import Action, Result
from orchestrator.fleet import topics
from orchestrator.fleet.documents import Block, Notice, seal
from orchestrator.sample import Variant
from tests.conftest import BuildKey
from tests.unit.usecases.conftest import MODEL

from .agentkit import DEVICE, LABELS, Device, Site, events, kinds, make_env, of, serve_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def device(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path], monkeypatch: pytest.MonkeyPatch,
           site: Site) -> Device:
    return Device(make_env(tmp_path, build_key, packages, monkeypatch), site)


def ack(device: Device, upto: object) -> None:
    assert device.agent.on_message(topics.ack(DEVICE), json.dumps({"upto": upto}).encode()) == []


def pending(device: Device) -> list[int]:
    return [e["seq"] for e in device.agent.state.outbox]


def test_every_connect_sends_presence_the_report_and_every_unacknowledged_event(device: Device) -> None:
    device.send(device.desired(variant=Variant.NAN))  # applying, failed
    connect = device.agent.on_connect()
    assert connect[0].topic == topics.presence(DEVICE) and connect[0].payload == b"online" and connect[0].retain
    assert connect[1].topic == topics.report(DEVICE) and connect[1].retain
    assert [e["seq"] for e in events(connect)] == [1, 2]
    assert all(not m.retain and m.qos == 1 for m in connect[2:])
    will = device.agent.will
    assert (will.topic, will.payload, will.retain) == (topics.presence(DEVICE), b"offline", True)
    assert device.agent.subscriptions == [f"orch/v1/dev/{DEVICE}/desired/+", topics.ack(DEVICE),
                                          topics.FLEET_NOTICE]


def test_unacknowledged_events_are_resent_until_acknowledged(device: Device) -> None:
    device.send(device.desired(variant=Variant.NAN))
    assert [e["seq"] for e in events(device.agent.tick()) if e["seq"] <= 2] == []  # just sent
    mirrored = list(range(3, device.agent.state.seq + 1))  # the journal's records, sent by that tick
    device.clock.sleep(2.5)
    assert [e["seq"] for e in events(device.agent.tick())] == []  # sent again only resend_s after the last send
    device.clock.sleep(2.5)
    assert [e["seq"] for e in events(device.agent.tick())] == [1, 2, *mirrored]
    ack(device, 2)
    device.clock.sleep(5.0)
    assert [e["seq"] for e in events(device.agent.tick())] == mirrored
    ack(device, device.agent.state.seq)
    device.clock.sleep(5.0)
    assert events(device.agent.tick()) == []
    assert pending(device) == []


def test_the_outbox_survives_a_restart_and_acknowledgements_trim_it(device: Device) -> None:
    device.send(device.desired(variant=Variant.NAN))
    device.tick(1.0)  # the journal mirrored: more events
    total = device.agent.state.seq
    assert total > 2 and pending(device) == list(range(1, total + 1))
    ack(device, 2)
    assert pending(device) == list(range(3, total + 1))
    ack(device, 1)  # older acknowledgements change nothing
    ack(device, "three")  # nor a malformed one
    assert device.agent.on_message(topics.ack(DEVICE), b"not json") == []
    assert pending(device) == list(range(3, total + 1))
    device.start()  # a restart: the same events, the same numbers
    assert [e["seq"] for e in events(device.agent.on_connect())] == list(range(3, total + 1))
    ack(device, total + 50)  # beyond what was sent: up to the last one
    assert pending(device) == [] and device.agent.state.acked == total
    device.start()
    assert events(device.agent.on_connect()) == []
    found = device.send(device.desired(variant=Variant.WORSE, bake_s=1))
    assert found[0]["seq"] == total + 1  # never reused


def test_a_full_outbox_drops_the_oldest_and_says_how_many(device: Device) -> None:
    device.options = replace(device.options, outbox_limit=3)
    device.start()
    device.send(device.desired(variant=Variant.NAN))
    device.tick(1.0)
    seq = device.agent.state.seq
    assert seq > 3 and pending(device) == [seq - 2, seq - 1, seq]
    assert device.agent.state.dropped == seq - 3
    alerts = [r for r in device.agent.journal.read().records if r.result is Result.ALERT]
    assert alerts and alerts[-1].details["dropped"] >= 1 and "outbox full" in alerts[-1].reason
    assert device.report()["outbox"] == {"pending": 3, "dropped": seq - 3, "first": seq - 2}


def block(device: Device, sha: str, selector: dict[str, str], block_id: str = "b1") -> Block:
    return Block(block_id, MODEL, sha, selector, "v2 fails on the Xavier's camera")


def test_a_block_notice_rolls_back_the_blocked_version_with_quarantine(device: Device) -> None:
    doc = device.desired(bake_s=600)
    device.send(doc)
    sha = doc["package"]["sha256"]
    found = device.notice(block(device, sha, {"hw": LABELS["hw"]}))
    assert kinds(found) == ["failed", "block"]
    failed, blocked = found
    assert failed["data"] == {"cause": "blocked"} and failed["serial"] == 1
    assert blocked["data"] == {"block": "b1", "sha256": sha, "rolled_back": True, "from": 2, "to": 1}
    assert (blocked["serial"], blocked["version"], blocked["rollout"]) == (1, 1, None)
    assert device.env.served_by_twin() == 1 and device.env.status(2) == "quarantined"
    rollback = device.env.last("rollback")
    assert rollback.details["quarantine"] is True and rollback.reason.startswith("fleet: block b1")
    assert device.notice(block(device, sha, {"hw": LABELS["hw"]})) == []  # the same notice again: nothing
    # A later install of the blocked package fails at once, with nothing fetched.
    again = device.send(device.desired(package=device.package(Variant.BETTER), rollout="r2"))
    assert kinds(again) == ["failed"] and again[0]["data"] == {"cause": "blocked"}
    assert kinds(device.tick(700)) == []


def test_once_the_block_is_lifted_the_version_it_quarantined_installs_again(device: Device) -> None:
    doc = device.desired(bake_s=600)
    device.send(doc)
    sha = doc["package"]["sha256"]
    device.notice(block(device, sha, {"hw": LABELS["hw"]}))
    assert device.env.status(2) == "quarantined"
    device.notice(serial=2)  # lifted: a notice without the block
    again = device.send(device.desired(package=device.package(Variant.BETTER), rollout="r2"))
    assert kinds(again) == ["applying", "serving"] and device.env.served_by_twin() == 2
    assert device.env.last("promote").to_version == 2


def test_a_quarantine_of_the_watchers_still_refuses_the_install_after_a_lifted_block(device: Device) -> None:
    doc = device.desired(bake_s=600)
    device.send(doc)
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: NaN outputs", quarantine=True)
    assert device.env.status(2) == "quarantined"
    again = device.send(device.desired(package=device.package(Variant.BETTER), rollout="r2"))
    assert kinds(again) == ["applying", "failed"] and again[-1]["data"]["cause"] == "promote"
    assert "quarantined" in again[-1]["detail"] and device.env.served_by_twin() == 1


def test_a_block_for_other_labels_changes_nothing(device: Device) -> None:
    doc = device.desired(bake_s=5)
    device.send(doc)
    assert device.notice(block(device, doc["package"]["sha256"], {"hw": "jetson-nano"})) == []
    assert device.agent.pending_jobs() == [] and device.env.served_by_twin() == 2
    assert kinds(device.tick(6)) == ["verified"]


def test_a_block_of_a_version_it_does_not_serve_is_remembered_and_refuses_its_install(device: Device) -> None:
    package = device.package(Variant.BETTER)
    found = device.notice(block(device, package.sha256, {"site": "plant-1"}))
    assert kinds(found) == ["block"] and found[0]["data"]["rolled_back"] is False
    failed = device.send(device.desired(package=package))
    assert kinds(failed) == ["failed"] and failed[0]["data"]["cause"] == "blocked"
    assert device.env.served_by_twin() == 1
    # Lifted by a newer notice: the next install goes ahead.
    device.notice(serial=2)
    assert kinds(device.send(device.desired(package=package))) == ["applying", "serving"]


def test_a_block_the_agent_had_not_acted_on_before_a_restart_is_acted_on_after_it(device: Device) -> None:
    doc = device.desired(bake_s=600)
    device.send(doc)
    payload = seal(Notice(1, device.clock(), (block(device, doc["package"]["sha256"], {}),)).to_json(),
                   device.controller)
    device.agent.on_message(topics.FLEET_NOTICE, payload)  # accepted, its rollback queued; then power lost
    device.start()
    assert [j.kind for j in device.agent.pending_jobs()] == ["block"]
    assert kinds(device.fresh(device.agent.work())) == ["failed", "block"]
    assert device.env.served_by_twin() == 1


def test_refused_notices_are_journaled_in_the_fleet_journal(device: Device) -> None:
    device.notice(serial=5)
    old = seal(Notice(4, device.clock()).to_json(), device.controller)
    found = device.deliver(topics.FLEET_NOTICE, old)
    assert kinds(found) == ["refused"] and found[0]["data"] == {"reason": "replayed", "document": "notice",
                                                                "names_model": None}
    assert (found[0]["serial"], found[0]["model"]) == (4, None)
    forged = seal(Notice(9, device.clock()).to_json(), Ed25519PrivateKey.generate())
    untrusted = device.deliver(topics.FLEET_NOTICE, forged)
    assert untrusted[0]["data"]["reason"] == "untrusted key" and untrusted[0]["serial"] is None
    records = device.agent.journal.read().records
    assert [(r.action, r.details["reason"]) for r in records if r.result is Result.REFUSED] == [
        (Action.FLEET, "replayed"), (Action.FLEET, "untrusted key")]
    assert device.agent.state.notice_serial == 5


def test_the_journal_mirror_starts_at_the_end_of_the_history_and_counts_its_rollbacks(device: Device) -> None:
    device.env.promote_better()
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: error_rate", quarantine=True)
    shutil.rmtree(device.env.state / "fleet")
    device.start()  # a device that ran before the agent: its history is counted, not sent again
    assert of(device.tick(1.0), "journal") == []
    assert device.report()["models"][MODEL]["versions"]["2"]["rollbacks"] == 1
