"""The production sampler's tracing budget, without a server."""

from __future__ import annotations

from orchestrator.daemons.sampler import MIN_TRACE_RATE, lease_count, needs_rearm, trace_rate


def test_rate_follows_the_traffic_for_the_sample_budget() -> None:
    assert trace_rate(4000.0, 2.0) == 2000
    assert trace_rate(30.0, 2.0) == 15
    assert trace_rate(3.0, 2.0) == MIN_TRACE_RATE  # never every request: Triton 2.51 crashed under that


def test_jitter_does_not_churn_the_settings() -> None:
    assert needs_rearm(None, 100)
    assert not needs_rearm(100, 150) and not needs_rearm(100, 60)
    assert needs_rearm(100, 201) and needs_rearm(100, 49)


def test_the_lease_is_a_minute_of_samples() -> None:
    assert lease_count(2.0) == 120 and lease_count(0.05) == 10
