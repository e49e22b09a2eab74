"""Version labels as pure decisions: names, where a label may point, what a switch does to them."""

from __future__ import annotations

import pytest

from orchestrator.core.labels import LabelMove, after_switch, check_name, decide_move, pinned
from orchestrator.core.model import VersionStatus
from orchestrator.core.switch import plan_switch
from orchestrator.errors import PolicyViolation, UsageError

VERIFIED, UNVERIFIED = VersionStatus.VERIFIED, VersionStatus.UNVERIFIED


@pytest.mark.parametrize("name", ["canary", "ab-control", "line_3", "c2"])
def test_label_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "v2", "2", "V10", "Canary", "-x", "a b", "x" * 64])
def test_names_that_are_versions_or_not_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_name(name)


def test_a_label_points_at_a_ready_version_or_loads_a_verified_one_below_the_served() -> None:
    assert decide_move("m", "canary", 1, 2, {1, 2}, VERIFIED) == LabelMove("canary", 1, load=False)
    assert decide_move("m", "canary", 2, 2, {1, 2}, VERIFIED) == LabelMove("canary", 2, load=False)
    assert decide_move("m", "old", 1, 3, {3}, VERIFIED) == LabelMove("old", 1, load=True)
    with pytest.raises(PolicyViolation, match="above the served v2: loading it would make it serve"):
        decide_move("m", "canary", 3, 2, {1, 2}, VERIFIED)
    with pytest.raises(PolicyViolation, match="unverified, not verified"):
        decide_move("m", "canary", 1, 3, {3}, UNVERIFIED)
    with pytest.raises(PolicyViolation, match="'stable' follows the served version"):
        decide_move("m", "stable", 1, 2, {1, 2}, VERIFIED)


def test_a_switch_moves_stable_and_drops_labels_of_unloaded_versions() -> None:
    labels = {"stable": 3, "canary": 3, "ab": 1}
    assert after_switch(labels, 1, (1,)) == ({"stable": 1, "ab": 1}, {"canary": 3})
    assert after_switch({}, 2, (1, 2)) == ({"stable": 2}, {})
    assert pinned({"stable": 3, "ab": 1}) == {1}


def test_a_labelled_version_stays_loaded_through_a_switch() -> None:
    # Serving v3 with v2 as the fallback, v1 labelled; promote v4 keeping one fallback.
    plan = plan_switch((1, 2, 3), 4, [3, 2], keep_resident=1, pinned={1})
    assert plan.final == (1, 3, 4)
    assert all(1 in step for step in plan.steps)  # never unloaded on the way
    assert plan_switch((1, 2, 3), 4, [3, 2], keep_resident=1).final == (3, 4)
