"""The probe budget against a real Triton: over a sustained steady state, the device time the watcher's probes
took, counted from Triton's own statistics, is the share the policy gives them.

No client traffic, so every execution of the model is a probe. The budget is set where it binds on the
sample classifier (5% of a sub-millisecond model allows ~70 probes a second; interval_s is well below that
rate) and where it can be measured; the only assertions are the budget's accounting.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.daemons.watch import Watch

from .conftest import MODEL, Stack
from .watchkit import set_watch_policy

pytestmark = pytest.mark.triton

SHARE = 0.05
BAKE_S = 2.0
WINDOW_S = 15.0


def compute_s(stack: Stack) -> float:
    triton = stack.triton()
    try:
        return sum(s.compute_ns for s in triton.execution_stats(MODEL).values()) / 1e9
    finally:
        triton.close()


def test_the_probes_spend_the_budgeted_share_of_the_device_as_triton_counts_it(stack: Stack) -> None:
    set_watch_policy(stack, {"interval_s": 0.005, "probe_budget": SHARE, "bake_budget": 0.2, "bake_s": BAKE_S,
                             "grace_s": 1.0, "metrics_interval_s": 0.5})
    daemon = Watch(stack.settings(), [MODEL], stack.server.metrics_url, CollectorRegistry(), take_commands=False)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(BAKE_S + 3.0)  # no switch on record: steady at once; the first costs measured
        before, started = compute_s(stack), time.monotonic()
        time.sleep(WINDOW_S)
        spent = (compute_s(stack) - before) / (time.monotonic() - started)
        registry = daemon.registry
        reported = registry.get_sample_value("orchestrator_probe_spent_ratio", {"model": MODEL})
        budget = registry.get_sample_value("orchestrator_probe_budget_ratio", {"model": MODEL, "phase": "steady"})
        probes = registry.get_sample_value("orchestrator_probes_total", {"model": MODEL})
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "watch did not stop"
    assert budget == SHARE
    assert 0.3 * SHARE < spent <= 1.5 * SHARE, f"probes took {spent:.2%} of the device, budget {SHARE:.0%}"
    assert reported is not None and 0.3 * SHARE < reported <= 1.5 * SHARE, reported
    assert probes and probes > 20  # it did probe, less than every interval_s would allow
