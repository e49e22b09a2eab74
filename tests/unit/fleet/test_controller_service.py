"""When the controller takes its next step: a gate interval after the last, half of one once a device's
reports or events arrived while a rollout is active (the loop's wait on the real asyncio clock)."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.fleet import topics
from orchestrator.fleet.controller_service import ControllerService, _judged, next_step_at
from orchestrator.fleet.transport import BrokerAddress


@pytest.mark.parametrize(("fresh", "rolling", "due"), [
    (False, False, 12.0), (True, False, 12.0), (False, True, 12.0), (True, True, 11.0)])
def test_fresh_data_brings_the_step_forward_only_while_a_rollout_is_active(fresh: bool, rolling: bool,
                                                                           due: float) -> None:
    assert next_step_at(10.0, 2.0, fresh, rolling) == due


def test_only_reports_and_events_count_as_fresh_data() -> None:
    assert _judged([(topics.presence("cam-1"), b"online"), (topics.report("cam-1"), b"{}")])
    assert _judged([(topics.events("cam-1"), b"{}")])
    assert not _judged([(topics.presence("cam-1"), b"online"), ("elsewhere/x", b"{}")])
    assert not _judged([])


def _waited(rolling: bool, fresh_after_s: float | None, interval_s: float = 2.0) -> float:
    """Seconds ``_until_next_step`` waited after a step that began now, with data arriving after ``fresh_after_s``."""
    service = ControllerService(None, BrokerAddress("127.0.0.1", 1, "controller"), gate_interval_s=interval_s)  # type: ignore[arg-type]
    service.rolling = rolling

    async def run() -> float:
        started = time.monotonic()
        if fresh_after_s is not None:
            asyncio.get_running_loop().call_later(fresh_after_s, service.fresh.set)
        await service._until_next_step(started, asyncio.Event())
        return time.monotonic() - started

    try:
        return asyncio.run(run())
    finally:
        service.store_thread.shutdown()


def test_a_report_during_a_rollout_brings_the_next_step_to_half_an_interval() -> None:
    assert 0.95 <= _waited(rolling=True, fresh_after_s=0.2) < 1.8
    assert 1.5 <= _waited(rolling=True, fresh_after_s=1.5) < 1.9  # past the half already: at once


def test_without_a_rollout_or_fresh_data_the_step_waits_the_whole_interval() -> None:
    assert _waited(rolling=False, fresh_after_s=0.2) >= 1.95
    assert _waited(rolling=True, fresh_after_s=None) >= 1.95


def test_a_stop_ends_the_wait_at_once() -> None:
    service = ControllerService(None, BrokerAddress("127.0.0.1", 1, "controller"))  # type: ignore[arg-type]

    async def run() -> float:
        stop, started = asyncio.Event(), time.monotonic()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        await service._until_next_step(started, stop)
        return time.monotonic() - started

    try:
        assert asyncio.run(run()) < 0.9
    finally:
        service.store_thread.shutdown()
