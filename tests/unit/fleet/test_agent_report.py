"""The fleet agent's report: its shape (what ``fleet/codec.py`` reads) and cumulative counters from the twin."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from orchestrator import __version__
from orchestrator.fleet import topics
from orchestrator.fleet.codec import device_view
from orchestrator.fleet.counters import CounterBook, Totals
from orchestrator.sample import INPUT, OUTPUT, Variant
from orchestrator.store.file_keys import RACY_NS
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import ExecutionStats
from tests.conftest import BuildKey
from tests.unit.usecases.conftest import IMAGES, MODEL

from .agentkit import DEVICE, LABELS, Device, Site, make_env, serve_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def device(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path], monkeypatch: pytest.MonkeyPatch,
           site: Site) -> Device:
    return Device(make_env(tmp_path, build_key, packages, monkeypatch), site)


def infer(device: Device, count: int) -> None:
    for _ in range(count):
        device.env.twin.infer(MODEL, {INPUT: IMAGES[:2]}, [OUTPUT])


def raises(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise RuntimeError("stub process is not healthy")


def test_the_report_says_what_serves_where_it_came_from_and_how_it_scored(device: Device) -> None:
    doc = device.desired(bake_s=1)
    device.send(doc)
    message = device.agent.report()
    assert (message.topic, message.retain, message.qos) == (topics.report(DEVICE), True, 1)
    report = json.loads(message.payload)
    assert set(report) == {"device", "at", "labels", "facts", "desired_serial", "notice_serial", "last_seq", "outbox",
                           "models"}
    assert (report["device"], report["at"], report["labels"]) == (DEVICE, device.clock(), LABELS)
    assert report["facts"]["agent"] == __version__ and set(report["facts"]) >= {"hardware", "tensorrt", "triton"}
    assert (report["desired_serial"], report["notice_serial"], report["last_seq"]) == ({MODEL: 1}, 0, 2)
    entry = report["models"][MODEL]
    sha = doc["package"]["sha256"]
    assert (entry["served"], entry["served_sha256"], entry["resident"]) == (2, sha, [1, 2])
    assert entry["quarantined"] == [] and 2 in entry["verified"]
    new, old = entry["versions"]["2"], entry["versions"]["1"]
    assert set(new) == {"sha256", "status", "requests", "errors", "latency_ns", "rollbacks", "golden", "golden_diff"}
    assert (new["sha256"], old["sha256"], new["status"]) == (sha, None, "verified")
    # v2's score and its lead over v1's, both measured when v2 was promoted; v1's from its own meta.yaml, with
    # nothing before it to compare with.
    assert new["golden"] > 0.8 and new["golden_diff"] == pytest.approx(new["golden"] - old["golden"], abs=1e-6)
    assert (old["golden"], old["golden_diff"]) == (0.65, None)
    # What the controller reads of it.
    view = device_view(DEVICE, LABELS, True, report, MODEL)
    assert (view.served, view.served_sha256) == (2, sha) and view.golden_diff[2] == new["golden_diff"]


def test_configured_facts_win_over_detected_ones(device: Device) -> None:
    device.options = replace(device.options, facts={"hardware": "jetson-xavier-nx", "tensorrt": "8.5.2"})
    device.start()
    facts = device.report()["facts"]
    assert (facts["hardware"], facts["tensorrt"], facts["agent"]) == ("jetson-xavier-nx", "8.5.2", __version__)


def test_counters_grow_with_requests_and_errors_and_survive_a_triton_restart(device: Device) -> None:
    device.send(device.desired(bake_s=1))
    infer(device, 3)
    counted = device.report()["models"][MODEL]["versions"]["2"]
    assert (counted["requests"], counted["errors"], counted["rollbacks"]) == (3, 0, 0) and counted["latency_ns"] >= 0
    device.env.backends.turn_bad(MODEL, 2, raises)
    for _ in range(2):
        with pytest.raises(Exception, match="stub process"):
            infer(device, 1)
    failing = device.report()["models"][MODEL]["versions"]["2"]
    assert (failing["requests"], failing["errors"]) == (5, 2)
    device.env.twin.start()  # Triton restarted: its counters start again from zero
    device.env.backends.turned.clear()
    infer(device, 1)
    after = device.report()["models"][MODEL]["versions"]["2"]
    assert (after["requests"], after["errors"]) == (6, 2)
    device.start()  # the agent restarted too: what it had counted was saved
    assert device.report()["models"][MODEL]["versions"]["2"]["requests"] == 6
    view = device_view(DEVICE, LABELS, True, device.report(), MODEL)
    assert (view.usage[2].requests, view.usage[2].errors) == (6, 2)


def test_a_report_while_triton_is_down_keeps_the_last_counts(device: Device) -> None:
    device.send(device.desired(bake_s=1))
    infer(device, 2)
    device.report()
    device.env.twin.stop()
    assert device.report()["models"][MODEL]["versions"]["2"]["requests"] == 2


def test_the_counter_book_adds_each_life_of_a_version() -> None:
    book = CounterBook()
    assert book.observe("m", 1, ExecutionStats(success_count=5, success_ns=50, fail_count=1)) == Totals(6, 1, 50)
    assert book.observe("m", 1, ExecutionStats(success_count=7, success_ns=70, fail_count=1)) == Totals(8, 1, 70)
    assert not book.changed
    assert book.observe("m", 1, ExecutionStats(success_count=1, success_ns=5)) == Totals(9, 1, 75)  # restarted
    assert book.changed
    again = CounterBook(json.loads(json.dumps(book.to_json())))
    assert again.totals("m", 1) == Totals(9, 1, 75) and again.totals("m", 2) == Totals()


def test_reports_read_the_model_files_again_only_once_they_changed(device: Device, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    device.send(device.desired(bake_s=1))
    time.sleep(RACY_NS / 1e9)  # files written this recently are read again whatever their stat says
    device.report()
    snapshots: list[str] = []
    taken = ModelStore.snapshot

    def counted(store: ModelStore) -> ModelSnapshot:
        snapshots.append(store.name)
        return taken(store)

    monkeypatch.setattr(ModelStore, "snapshot", counted)
    assert device.report()["models"][MODEL]["served"] == 2 and snapshots == []
    # An operator's rollback in another process: the next report says so.
    device.env.orchestrator().rollback(MODEL, reason="operator")
    snapshots.clear()  # the rollback's own
    entry = device.report()["models"][MODEL]
    assert entry["served"] == 1 and snapshots == [MODEL]
