"""The probe budget in the watcher, on a twin whose every execution costs a known device time (``compute_s``,
taken on the virtual clock): the probes spend the share in force, measured by the twin's own statistics, a
bake after each switch, none after it with a zero budget, and a daemon that sleeps between what is due."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.daemons.watch import Watch
from orchestrator.daemons.watcher import ModelWatcher
from orchestrator.triton import metrics as triton_metrics

from .conftest import MODEL, NOWHERE, Env

BUDGET = {"probe_budget": 0.01, "bake_budget": 0.2, "bake_s": 10}


def run_for(env: Env, watcher: ModelWatcher, seconds: float) -> None:
    """Tick every interval_s for ``seconds`` of the virtual clock (a probe's compute time passes too)."""
    end = env.clock() + seconds
    while env.clock() < end:
        watcher.tick()
        env.clock.sleep(watcher.policy.interval_s)


def device_seconds(env: Env, version: int) -> float:
    """What the twin's statistics say the version's executions cost."""
    return env.twin.execution_stats(MODEL)[version].compute_ns / 1e9


def sample(registry: Any, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"model": MODEL, **labels})


def test_at_steady_state_the_probes_spend_the_budget_whatever_a_probe_costs(env: Env) -> None:
    env.twin = env.make_twin(compute_s=0.01)  # a 10 ms network: 1% allows one probe a second
    watcher, registry = env.watcher(BUDGET)  # no switch on record: steady from the start
    before = device_seconds(env, 1)
    run_for(env, watcher, 60.0)
    probes = sample(registry, "orchestrator_probes_total")
    assert 58 <= probes <= 64  # 60 s at 1%, and the full bucket a watcher starts with
    spent = (device_seconds(env, 1) - before) / 60.0  # counted by the server, not by the watcher
    assert spent == pytest.approx(0.01, rel=0.1)
    # Triton's compute plus the watcher's own CPU for each probe (here the twin's work is on its thread too).
    assert 0.01 < sample(registry, "orchestrator_probe_cost_seconds") == pytest.approx(0.01, rel=0.1)
    assert sample(registry, "orchestrator_probe_spent_ratio") == pytest.approx(0.01, rel=0.1)
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="steady") == 0.01
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="bake") == 0.0
    assert sample(registry, "orchestrator_checks_total") > 1000  # ticked throughout: judging never stopped


def test_the_models_one_daemon_watches_share_the_devices_steady_budget(env: Env) -> None:
    env.twin = env.make_twin(compute_s=0.01)
    watcher, registry = env.watcher(BUDGET, sharers=4)  # one of four models: a quarter of the device's 1%
    before = device_seconds(env, 1)
    run_for(env, watcher, 80.0)
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="steady") == 0.0025
    assert (device_seconds(env, 1) - before) / 80.0 == pytest.approx(0.0025, rel=0.15)
    assert 18 <= sample(registry, "orchestrator_probes_total") <= 24  # one every 4 s (was one a second alone)


def test_a_switch_starts_a_bake_at_the_bake_share_then_steady(env: Env) -> None:
    env.twin = env.make_twin(compute_s=0.02)
    env.import_()
    watcher, registry = env.watcher(BUDGET)
    run_for(env, watcher, 20.0)
    steady = sample(registry, "orchestrator_probes_total")
    assert steady == pytest.approx(20 * 0.5, abs=3)  # 1% of 20 ms probes: one every 2 s
    env.orchestrator().promote(MODEL, 2)  # seen on the next tick: a switch
    run_for(env, watcher, 0.1)
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="bake") == 0.2
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="steady") == 0.0
    before = device_seconds(env, 2)
    run_for(env, watcher, 9.9)
    baked = sample(registry, "orchestrator_probes_total") - steady
    assert baked == pytest.approx(10 * 10, abs=5)  # 20%: ten a second
    assert (device_seconds(env, 2) - before) / 9.9 == pytest.approx(0.2, rel=0.1)
    run_for(env, watcher, 20.0)
    assert sample(registry, "orchestrator_probes_total") - steady - baked == pytest.approx(10, abs=3)
    assert sample(registry, "orchestrator_probe_budget_ratio", phase="steady") == 0.01


def test_a_zero_budget_probes_in_the_bake_only_and_the_checks_go_on(env: Env) -> None:
    env.promote_better()  # the watcher starts in the bake of this switch (the journal's time)
    watcher, registry = env.watcher({**BUDGET, "probe_budget": 0})
    run_for(env, watcher, 12.0)
    probed = sample(registry, "orchestrator_probes_total")
    assert probed > 100  # a free probe during the bake: every interval_s
    checks = sample(registry, "orchestrator_checks_total")
    run_for(env, watcher, 10.0)
    assert sample(registry, "orchestrator_probes_total") == probed
    assert sample(registry, "orchestrator_checks_total") > checks  # metrics-based rules still judge


def test_until_the_statistics_tell_a_probe_costs_its_round_trip(env: Env) -> None:
    env.twin = env.make_twin(compute_s=0.05)
    watcher, registry = env.watcher(BUDGET)
    run_for(env, watcher, 0.2)  # two probes: the first one's round trip includes connecting
    assert sample(registry, "orchestrator_probes_total") == 2
    assert sample(registry, "orchestrator_probe_cost_seconds") == pytest.approx(0.05)  # the round trip
    assert not watcher.schedule.cost.measured
    run_for(env, watcher, 3.0)
    assert watcher.schedule.cost.measured  # from the twin's statistics now, and the watcher's own CPU
    assert 0.05 < sample(registry, "orchestrator_probe_cost_seconds") == pytest.approx(0.05, rel=0.1)


def daemon_run(env: Env, watch: Watch, seconds: float) -> None:
    """``Watch.run``'s loop on the virtual clock: a pass, then sleep until the next wake."""
    end = env.clock() + seconds
    while env.clock() < end:
        watch.tick()
        env.clock.sleep(max(0.0, watch.next_wake() - env.clock()))


def test_the_daemon_sleeps_until_a_watcher_is_due_and_still_sees_a_switch_within_a_second(env: Env) -> None:
    env.twin = env.make_twin(compute_s=0.02)
    env.import_()
    env.monkeypatch.setattr(triton_metrics, "scrape", lambda url, timeout_s: None)
    env.set_policy("watch", grace_s=0, **BUDGET)
    watch = Watch(env.settings(), None, NOWHERE, triton=env.twin, clock=env.clock)
    registry = watch.registry
    daemon_run(env, watch, 60.0)
    checks = sample(registry, "orchestrator_checks_total")
    assert 55 <= checks <= 130  # about once a second (was 1200: every interval_s)
    assert sample(registry, "orchestrator_probes_total") == pytest.approx(30, abs=4)
    env.orchestrator().promote(MODEL, 2)  # an operator's switch
    switched = env.clock()
    while sample(registry, "orchestrator_served_version") != 2:
        daemon_run(env, watch, 0.01)
    assert env.clock() - switched <= 1.0 + 0.05
    checks = sample(registry, "orchestrator_checks_total")
    daemon_run(env, watch, 5.0)
    assert sample(registry, "orchestrator_checks_total") - checks == pytest.approx(5 / 0.05, abs=5)  # the bake
