"""The probe budget with literal clocks: the rate follows the cost, a bake then the steady share, a capped
burst after an idle spell, a cost that changes, a zero share."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from itertools import pairwise

import pytest

from orchestrator.core.journal import JournalSummary, Record, Result
from orchestrator.core.probe_budget import (
    BAKE,
    STEADY,
    Bucket,
    Budget,
    credited,
    due,
    grid_after,
    last_switch,
    on_grid,
    ready_at,
    since,
    spend,
    standing,
    start,
)

STEADY_ONLY = Budget(steady=0.01, bake=0.2, bake_s=0.0, interval_s=0.05)
BURST_SPARE = 2  # the full bucket a switch starts with


def probes(budget: Budget, bucket: Bucket, cost: Callable[[float], float], begin: float,
           end: float) -> tuple[list[float], Bucket]:
    """Probe whenever the budget allows between two clock times: the probe times, and the bucket after."""
    times, now = [], begin
    while (at := ready_at(budget, bucket, cost(now), now)) <= end:
        assert due(budget, bucket, cost(now), at)
        bucket = spend(budget, bucket, cost(now), at)
        times.append(at)
        now = at
    return times, bucket


def spent_share(times: list[float], cost: float, seconds: float) -> float:
    return len(times) * cost / seconds


@pytest.mark.parametrize(("cost", "per_s"), [(0.01, 1.0), (0.002, 5.0), (0.025, 0.4)])
def test_the_rate_follows_the_cost(cost: float, per_s: float) -> None:
    times, _ = probes(STEADY_ONLY, start(0.0, 0.0), lambda _: cost, 0.0, 100.0)
    assert len(times) == pytest.approx(per_s * 100, abs=BURST_SPARE + 1)
    assert 0.0099 <= spent_share(times, cost, 100.0) <= 0.01 + BURST_SPARE * cost / 100.0


def test_interval_s_caps_the_rate_of_a_cheap_probe() -> None:
    times, _ = probes(STEADY_ONLY, start(0.0, 0.0), lambda _: 0.0001, 0.0, 10.01)
    assert len(times) == 201  # every 50 ms, 0.2% of the device: the budget is not what binds
    assert min(b - a for a, b in pairwise(times)) == pytest.approx(0.05)


def test_a_zero_cost_probes_every_interval() -> None:
    times, _ = probes(STEADY_ONLY, start(0.0, 0.0), lambda _: 0.0, 0.0, 1.01)
    assert len(times) == 21


def test_the_bake_share_then_the_steady_one() -> None:
    budget = Budget(steady=0.01, bake=0.2, bake_s=10.0, interval_s=0.05)
    times, _ = probes(budget, start(0.0, 0.0), lambda _: 0.02, 0.0, 110.0)
    baking = [t for t in times if t < 10.0]
    steady = [t for t in times if t >= 10.0]
    assert len(baking) == pytest.approx(10 * 10, abs=3)  # 20% of 20 ms probes: 10 per second
    assert len(steady) == pytest.approx(100 * 0.5, abs=2)  # 1%: one every 2 s
    assert budget.phase(9.9) == BAKE and budget.phase(10.0) == STEADY


def test_a_switch_starts_a_new_bake_with_a_full_bucket() -> None:
    budget = Budget(steady=0.01, bake=0.2, bake_s=10.0, interval_s=0.05)
    _, bucket = probes(budget, start(0.0, 0.0), lambda _: 0.02, 0.0, 50.0)  # steady by now
    assert ready_at(budget, bucket, 0.02, 50.0) > 50.0
    switched = start(50.0, 50.0)
    assert due(budget, switched, 0.02, 50.0)  # the new version is probed at once
    times, _ = probes(budget, switched, lambda _: 0.02, 50.0, 55.0)
    assert len(times) == pytest.approx(5 * 10, abs=3)


def test_a_long_idle_spell_allows_no_burst() -> None:
    bucket = spend(STEADY_ONLY, start(0.0, 0.0), 0.01, 0.0)
    full = credited(STEADY_ONLY, bucket, 0.01, 10_000.0)  # nobody probed for hours
    assert full.tokens == pytest.approx(0.02)  # capped at two probes' cost, not 100 s of credit
    times, _ = probes(STEADY_ONLY, bucket, lambda _: 0.01, 10_000.0, 10_010.0)
    assert times[:2] == pytest.approx([10_000.0, 10_000.05])  # the spare probe, interval_s apart
    assert len(times) == pytest.approx(2 + 10, abs=1)  # then 1 per second


def test_a_cost_that_changes_changes_the_rate() -> None:
    def cost(now: float) -> float:
        return 0.002 if now < 50.0 else 0.02  # a heavier version, or a busier device

    times, _ = probes(STEADY_ONLY, start(0.0, 0.0), cost, 0.0, 100.0)
    before = [t for t in times if t < 50.0]
    after = [t for t in times if t >= 50.5]
    assert len(before) == pytest.approx(250, abs=3)  # 5 per second
    assert len(after) == pytest.approx(49.5 * 0.5, abs=2)  # 0.5 per second
    assert spent_share(after, 0.02, 49.5) == pytest.approx(0.01, rel=0.1)


def test_a_zero_steady_budget_probes_during_the_bake_only() -> None:
    budget = Budget(steady=0.0, bake=0.2, bake_s=10.0, interval_s=0.05)
    times, bucket = probes(budget, start(0.0, 0.0), lambda _: 0.02, 0.0, 1000.0)
    assert times and max(times) < 10.0
    assert ready_at(budget, bucket, 0.02, 10.0) == math.inf
    assert ready_at(budget, bucket, 0.0, 10.0) == math.inf  # even a free probe: 0 means none
    assert not due(Budget(0.0, 0.0, 0.0, 0.05), start(0.0, 0.0), 0.0, 0.0)


def test_a_bake_that_started_before_the_watcher_is_only_what_is_left_of_it() -> None:
    budget = Budget(steady=0.01, bake=0.2, bake_s=300.0, interval_s=0.05)
    times, _ = probes(budget, start(-290.0, 0.0), lambda _: 0.02, 0.0, 30.0)
    assert len([t for t in times if t < 10.0]) == pytest.approx(100, abs=3)
    assert len([t for t in times if t >= 10.0]) == pytest.approx(10, abs=2)


def test_standing_for_status() -> None:
    budget = Budget(steady=0.01, bake=0.2, bake_s=300.0, interval_s=0.05)
    assert standing(budget, 60.0) == standing(budget, 60.0)
    baking = standing(budget, 60.0)
    assert (baking.phase, baking.share, baking.steady, baking.bake_left_s) == (BAKE, 0.2, 0.01, 240.0)
    assert standing(budget, 300.0).phase == STEADY and standing(budget, 300.0).bake_left_s == 0.0
    assert standing(budget, None).phase == STEADY  # no switch on record


def test_the_last_switch_is_the_journals_last_promote_or_rollback() -> None:
    summary = JournalSummary().add(
        Record("promote", Result.SUCCEEDED, "a", time="2026-11-30T10:00:00.000+00:00", to_version=2),
        Record("rollback", Result.SUCCEEDED, "b", time="2026-11-30T11:00:00.000+00:00", to_version=1),
        Record("promote", Result.FAILED, "c", time="2026-11-30T12:00:00.000+00:00", to_version=3))
    assert last_switch(summary) == "2026-11-30T11:00:00.000+00:00"  # a failed promote switched nothing
    assert last_switch(JournalSummary()) is None
    switched = datetime(2026, 11, 30, 11, tzinfo=timezone.utc).timestamp()
    assert since(last_switch(summary), switched + 90.0) == 90.0
    assert since(last_switch(summary), switched - 5.0) == 0.0  # a clock set back: just now, never negative
    assert since(None, 1.0) is None and since("not a time", 1.0) is None


def test_probes_on_a_grid_keep_their_slots() -> None:
    """A daemon ticks its watchers on a grid of interval_s; a watcher ticked late in a pass keeps its slot."""
    assert on_grid(10.0149, 0.05) == pytest.approx(10.0) and on_grid(0.15000000000000002, 0.05) == 0.15000000000000002
    assert grid_after(10.0149, 0.05) == pytest.approx(10.05) and grid_after(10.05, 0.05) == pytest.approx(10.05)
    assert grid_after(math.inf, 0.05) == math.inf
    bucket = spend(STEADY_ONLY, start(0.0, 0.0), 0.0, 10.0149, slot=on_grid(10.0149, 0.05))
    assert ready_at(STEADY_ONLY, bucket, 0.0, 10.02) == pytest.approx(10.05)  # not 10.0649
