"""Wave assignment: cumulative shares, canary groups first, stable across calls, spread over label groups."""

from __future__ import annotations

from collections import Counter

from orchestrator.fleet.waves import assign_waves

from .planning import plan


def _labels(count: int) -> dict[str, dict[str, str]]:
    return {f"d{i:03d}": {"site": f"s{i % 4}", "hw": "nano" if i % 10 == 0 else "nx",
                          "role": "canary" if i in (5, 17) else "line"} for i in range(count)}


def test_percent_waves_are_cumulative_and_reach_every_device() -> None:
    waves = assign_waves(plan(), _labels(200))
    assert Counter(waves.values()) == {0: 20, 1: 40, 2: 60, 3: 80}


def test_the_same_plan_assigns_the_same_devices_and_another_rollout_others() -> None:
    devices = _labels(200)
    assert assign_waves(plan(), devices) == assign_waves(plan(), dict(reversed(devices.items())))
    first = {d for d, w in assign_waves(plan(), devices).items() if w == 0}
    other = {d for d, w in assign_waves(plan(rollout="r2"), devices).items() if w == 0}
    assert first != other


def test_spread_takes_a_share_of_every_group() -> None:
    waves = assign_waves(plan(spread=["site", "hw"]), _labels(400))
    first = [d for d, w in waves.items() if w == 0]
    labels = _labels(400)
    assert Counter(labels[d]["site"] for d in first) == {"s0": 10, "s1": 10, "s2": 10, "s3": 10}
    assert sum(labels[d]["hw"] == "nano" for d in first) == 4  # 10 % of the 40 nano devices


def test_a_canary_wave_takes_its_selector_and_counts_towards_the_next_share() -> None:
    waves = assign_waves(plan(waves=[{"selector": {"role": "canary"}}, {"percent": 10}, {"percent": 100}]),
                         _labels(100))
    assert {d for d, w in waves.items() if w == 0} == {"d005", "d017"}
    assert Counter(waves.values()) == {0: 2, 1: 8, 2: 90}


def test_the_selector_limits_the_rollout_and_a_tiny_wave_still_has_a_device() -> None:
    waves = assign_waves(plan(selector={"site": "s1"}, waves=[{"percent": 1}, {"percent": 100}]), _labels(40))
    assert set(waves) == {f"d{i:03d}" for i in range(1, 40, 4)}
    assert Counter(waves.values()) == {0: 1, 1: 9}
