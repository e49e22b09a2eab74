"""One fleet agent against a real Mosquitto (``conftest.py``), on a twin-backed device (``tests/unit/fleet``).

The controller's side is played by a plain Link with the controller's user: it publishes a signed
desired document retained, reads the events and reports, and acknowledges.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.delivery.signing import generate_keypair
from orchestrator.fleet import agent_runner, topics
from orchestrator.fleet.agent_runner import device_link, run_agent
from orchestrator.fleet.broker import free_port
from orchestrator.fleet.transport import BrokerAddress, Link
from orchestrator.sample import Variant
from tests.conftest import BuildKey, classifier_only
from tests.fleet.conftest import Broker, Inbox, run, running
from tests.unit.fleet.agentkit import Device, Site, make_env, serve_site
from tests.unit.usecases.conftest import MODEL, ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve_site(tmp_path_factory.mktemp("site"))


def make_device(name: str, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
                monkeypatch: pytest.MonkeyPatch, site: Site, resend_s: float) -> Device:
    device = Device(make_env(tmp_path, build_key, packages, monkeypatch), site, name=name, agent_clock=time.time)
    device.options = replace(device.options, resend_s=resend_s, report_s=2.0, journal_s=0.2)
    device.start()
    return device


def fast(link: Link) -> Link:
    link.keepalive_s, link.min_backoff_s, link.max_backoff_s = 5, 0.02, 0.3
    return link


def controller(address: BrokerAddress, client_id: str) -> Link:
    return fast(Link(address, client_id, topics.CONTROLLER_FILTERS))


def sequence(inbox: Inbox, device: str) -> list[int]:
    """The event numbers received from ``device``, in arrival order (resends included)."""
    return [json.loads(m.payload)["seq"] for m in inbox.on(topics.events(device))]


def received(inbox: Inbox, device: str) -> list[dict[str, Any]]:
    """Each event once (the controller's de-duplication by number), in the order they first arrived."""
    found: dict[int, dict[str, Any]] = {}
    for message in inbox.on(topics.events(device)):
        event = json.loads(message.payload)
        found.setdefault(event["seq"], event)
    return list(found.values())


def test_a_retained_install_reaches_the_agent_its_events_arrive_numbered_and_stop_after_the_ack(
        broker: Broker, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        monkeypatch: pytest.MonkeyPatch, site: Site) -> None:
    name = "agent-install-1"
    device = make_device(name, tmp_path, build_key, packages, monkeypatch, site, resend_s=0.3)
    address = broker.device(name)

    async def body() -> None:
        inbox = Inbox()
        ctl = controller(broker.controller, "ctl-agent-install")
        async with running((ctl, inbox)):
            # Published while the device is offline: retained, it gets it when it connects.
            await ctl.publish(topics.desired(name, MODEL), device.sealed(device.desired(bake_s=0.5)), retain=True)
            stop = asyncio.Event()
            agent = asyncio.create_task(run_agent(device.agent, fast(device_link(device.agent, address)), stop))
            try:
                await inbox.wait_for(lambda box: {"applying", "serving", "verified"} <= {
                    e["kind"] for e in received(box, name)}, timeout_s=20)
                assert device.env.served_by_twin() == 2
                kinds = [e["kind"] for e in received(inbox, name) if e["kind"] != "journal"]
                assert kinds[:3] == ["applying", "serving", "verified"]
                seqs = sorted(set(sequence(inbox, name)))
                assert seqs == list(range(1, seqs[-1] + 1))  # numbered 1, 2, 3... with no gap
                # A report follows the events (at most a second later), saying what serves now.
                await inbox.wait_for(lambda box: any(json.loads(m.payload)["models"][MODEL]["served"] == 2
                                                     for m in box.on(topics.report(name))), timeout_s=5)
                assert inbox.on(topics.presence(name))[0].payload == b"online"
                # Acknowledged up to the last one seen: none of those comes again.
                upto = seqs[-1]
                await ctl.publish(topics.ack(name), json.dumps({"upto": upto}).encode())
                await asyncio.sleep(0.3)  # the ack reaches the device
                after = len(inbox.on(topics.events(name)))
                await asyncio.sleep(1.2)  # four resend intervals
                assert all(seq > upto for seq in sequence(inbox, name)[after:])
                assert all(e["seq"] > upto for e in device.agent.state.outbox)
            finally:
                stop.set()
                await agent
            await inbox.wait_for(lambda box: box.on(topics.presence(name))[-1].payload == b"offline")

    run(body(), timeout_s=40)


def test_unacknowledged_events_are_sent_again_after_the_broker_restarts(
        make_broker: Callable[..., Broker], tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        monkeypatch: pytest.MonkeyPatch, site: Site) -> None:
    broker = make_broker()
    name = "agent-restart-1"
    device = make_device(name, tmp_path, build_key, packages, monkeypatch, site, resend_s=1.0)
    address = broker.device(name)

    async def body() -> None:
        inbox = Inbox()
        ctl = controller(broker.controller, "ctl-agent-restart")
        async with running((ctl, inbox)):
            stop = asyncio.Event()
            link = fast(device_link(device.agent, address))
            agent = asyncio.create_task(run_agent(device.agent, link, stop))
            try:
                await inbox.wait_for(lambda box: bool(box.on(topics.presence(name))), timeout_s=10)
                await ctl.publish(topics.desired(name, MODEL), device.sealed(device.desired(variant=Variant.NAN)),
                                  retain=True)
                await inbox.wait_for(lambda box: "failed" in {e["kind"] for e in received(box, name)}, timeout_s=20)
                first = sorted(set(sequence(inbox, name)))
                broker.process.kill()  # nothing kept: the events exist only in the device's outbox now
                before = len(inbox.on(topics.events(name)))
                await asyncio.sleep(0.5)
                broker.process.start()
                # Sent again on the reconnect (lost if the controller was not back yet) and each resend_s after:
                # every one arrives again, under the same number.
                await inbox.wait_for(lambda box: set(first) <= set(sequence(box, name)[before:]), timeout_s=15)
                assert link.connects == 2
                failed = [e for e in received(inbox, name) if e["kind"] == "failed"]
                assert len({e["seq"] for e in failed}) == 1 and failed[0]["data"] == {"cause": "promote"}
            finally:
                stop.set()
                await agent

    run(body(), timeout_s=60)


def test_orchestrate_watch_with_fleet_runs_the_agent_beside_the_watcher(broker: Broker, tmp_path: Path) -> None:
    """The CLI's wiring: the agent connects, says online and reports, and goes offline on SIGTERM. No Triton
    answers at --url: the watcher says so and the agent reports what the disk says."""
    name = "agent-cli-1"
    address = broker.device(name)
    repository, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    (tmp_path / "keys").mkdir()
    generate_keypair(tmp_path / "controller.key", tmp_path / "keys" / "controller.pub")
    (tmp_path / "mqtt.pass").write_text(f"{address.password}\n")
    conf = tmp_path / "fleet.yaml"
    conf.write_text(yaml.safe_dump({
        "device": name, "broker": {"host": address.host, "port": address.port, "password_file": "mqtt.pass"},
        "controller_keys": "keys", "labels": {"site": "plant-1"}, "facts": {"hardware": "test-rig"},
        "report_s": 1}))
    command = [sys.executable, "-m", "orchestrator", "--repository", str(repository), "--state-dir", str(state),
               "--url", "http://127.0.0.1:9", "watch", "--metrics-port", str(free_port()), "--fleet", str(conf)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def body() -> None:
        inbox = Inbox()
        async with running((controller(broker.controller, "ctl-agent-cli"), inbox)):
            await inbox.wait_for(lambda box: any(m.payload == b"online" for m in box.on(topics.presence(name)))
                                 and bool(box.on(topics.report(name))), timeout_s=30)
            report = json.loads(inbox.on(topics.report(name))[-1].payload)
            assert report["facts"]["hardware"] == "test-rig" and report["models"][MODEL]["served"] == 1
            process.send_signal(signal.SIGTERM)
            await inbox.wait_for(lambda box: box.on(topics.presence(name))[-1].payload == b"offline", timeout_s=15)

    try:
        run(body(), timeout_s=60)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=10)
        print(err.decode()[-3000:])


def test_a_device_agent_whose_link_stops_on_a_bug_starts_it_again_and_reports(
        broker: Broker, tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        monkeypatch: pytest.MonkeyPatch, site: Site, caplog: pytest.LogCaptureFixture) -> None:
    name = "agent-crash-1"
    device = make_device(name, tmp_path, build_key, packages, monkeypatch, site, resend_s=0.3)
    address = broker.device(name)
    monkeypatch.setattr(agent_runner, "CRASH_RETRY_S", 0.2)
    connects = {"n": 0}
    on_connect = device.agent.on_connect

    def failing_once() -> list[Any]:
        connects["n"] += 1
        if connects["n"] == 1:
            raise RuntimeError("a bug in the first connect")
        return on_connect()

    monkeypatch.setattr(device.agent, "on_connect", failing_once)

    async def body() -> None:
        inbox = Inbox()
        async with running((controller(broker.controller, "ctl-agent-crash"), inbox)):
            stop = threading.Event()
            thread = threading.Thread(target=agent_runner.serve, args=(device.agent, address, stop), daemon=True)
            thread.start()
            try:
                await inbox.wait_for(lambda box: box.on(topics.report(name)), timeout_s=20)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive()

    with caplog.at_level(logging.ERROR, logger="orchestrator.fleet.agent_runner"):
        run(body(), timeout_s=40)
    assert connects["n"] >= 2
    assert any("the link stopped; starting it again" in r.getMessage() and r.exc_info for r in caplog.records)
