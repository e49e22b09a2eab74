"""core.memory: what a candidate needs and whether it fits, by hand-worked figures."""

from __future__ import annotations

import pytest

from orchestrator.core.memory import MIB, MemoryNeed, candidate_need, decide_memory


def test_the_larger_of_the_packages_figure_and_the_served_versions_footprint() -> None:
    assert candidate_need(512, 1, 100 * MIB) == MemoryNeed(512 * MIB, "memory_mb 512 in its meta.yaml")
    assert candidate_need(None, 1, 100 * MIB) == MemoryNeed(100 * MIB, "v1's measured footprint")
    assert candidate_need(None, 1, None) is None
    # Declaring less than the device measured for this model does not pass the gate.
    assert candidate_need(50, 1, 100 * MIB) == MemoryNeed(
        100 * MIB, "v1's measured footprint, above the memory_mb 50 in its meta.yaml")
    assert candidate_need(None, None, None) is None


@pytest.mark.parametrize("bad", [0, -5, "512", True, float("inf"), float("nan")])
def test_a_declared_figure_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="memory_mb must be a positive number"):
        candidate_need(bad, None, None)


def test_fits_when_need_plus_headroom_is_available() -> None:
    need = MemoryNeed(100 * MIB, "x")
    assert decide_memory(150 * MIB, need, 50 * MIB, {}, False).fits
    short = decide_memory(149 * MIB, need, 50 * MIB, {}, False)
    assert not short.fits and short.drop == ()
    assert short.reason == "the candidate needs 100 MiB (x) + 50 MiB headroom, the device has 149 MiB available"


def test_the_oldest_fallbacks_are_dropped_until_the_candidate_fits() -> None:
    need = MemoryNeed(100 * MIB, "x")
    decision = decide_memory(20 * MIB, need, 0, {3: 50 * MIB, 1: 40 * MIB, 2: None}, True)
    assert decision.fits and decision.drop == (1, 2)  # 20 + 40 + 100 (v2 unmeasured: counted as the need)
    assert decision.reason.endswith("unloading fallback v1, v2 first")


def test_no_drop_without_the_policy_and_the_refusal_says_which_setting() -> None:
    decision = decide_memory(20 * MIB, MemoryNeed(100 * MIB, "x"), 0, {1: 200 * MIB}, False)
    assert not decision.fits and "promotion.free_fallback_for_memory" in decision.reason


def test_dropping_every_fallback_may_still_not_be_enough() -> None:
    decision = decide_memory(10 * MIB, MemoryNeed(100 * MIB, "x"), 0, {1: 20 * MIB}, True)
    assert not decision.fits and decision.drop == ()
