"""Clients inferring continuously through a promote and a rollback see no failure and the right version."""

from __future__ import annotations

import time

import pytest

from orchestrator.sample import Variant

from .conftest import Stack, Traffic

pytestmark = pytest.mark.triton


def test_no_request_fails_through_promote_and_rollback(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    orchestrator = stack.orchestrator()
    with Traffic(stack.server.url, threads=4) as traffic:
        orchestrator.promote("classifier", 2)
        promoted_at = time.monotonic()
        time.sleep(1.0)
        rollback_started = time.monotonic()
        orchestrator.rollback("classifier")
        rolled_back_at = time.monotonic()
        time.sleep(1.0)
    assert traffic.failures() == []
    assert len(traffic.answers) > 200  # the clients really were busy throughout
    between = {v for sent, v, _ in traffic.answers if promoted_at <= sent < rollback_started}
    assert between == {2}
    assert traffic.versions_sent_after(rolled_back_at) == {1}
    before = {v for sent, v, _ in traffic.answers if sent < promoted_at}
    assert before <= {1, 2}  # v2 takes over the moment it is READY, inside the promote


def test_no_request_fails_through_repeated_switches(stack: Stack, packages):
    for _ in range(2):
        assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    orchestrator = stack.orchestrator()
    with Traffic(stack.server.url, threads=4) as traffic:
        for target in (2, 3):
            orchestrator.promote("classifier", target)
            switched = time.monotonic()
            time.sleep(0.5)
            assert {v for sent, v, _ in traffic.answers if sent >= switched} == {target}
        orchestrator.rollback("classifier")  # back to v2, resident: no load
        rolled = time.monotonic()
        time.sleep(0.5)
        second_started = time.monotonic()
        orchestrator.rollback("classifier", to=1)  # v1 not resident: loaded, then switched
        final = time.monotonic()
        time.sleep(0.5)
    assert traffic.failures() == []
    assert {v for sent, v, _ in traffic.answers if rolled <= sent < second_started} == {2}
    assert traffic.versions_sent_after(final) == {1}
