"""Which versions keep their artifacts: core/retention.py with literal states."""

from __future__ import annotations

import pytest

from orchestrator.core.journal import Action, Record, Result
from orchestrator.core.policy import PolicyError, RetentionPolicy, build_policies
from orchestrator.core.retention import KeepReason, decide_retention

R = KeepReason


def _decide(versions: range | list[int], **given: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {"keep": 1, "served": None, "resident": (), "last_verified": None}
    values.update(given)
    return decide_retention(versions, **values)  # type: ignore[arg-type]


def test_the_newest_keep_versions_are_kept_and_the_rest_prunable_lowest_first() -> None:
    decided = _decide(range(1, 8), keep=3)
    assert [k.version for k in decided.kept] == [7, 6, 5]
    assert all(k.reasons == (R.NEWEST,) for k in decided.kept)
    assert decided.prunable == (1, 2, 3, 4)


def test_served_resident_and_last_verified_are_kept_however_old() -> None:
    decided = _decide(range(1, 10), served=3, resident=(2, 3), last_verified=1)
    assert decided.reasons(3) == (R.SERVED, R.RESIDENT)
    assert decided.reasons(2) == (R.RESIDENT,)
    assert decided.reasons(1) == (R.LAST_VERIFIED,)
    assert decided.reasons(9) == (R.NEWEST,)
    assert decided.prunable == (4, 5, 6, 7, 8)


def test_a_version_an_unfinished_operation_names_is_kept() -> None:
    promote = Record(Action.PROMOTE, Result.STARTED, "op1", from_version=2, to_version=4)
    decided = _decide(range(1, 7), open_operations=(promote,))
    assert decided.reasons(2) == (R.OPEN_OPERATION,) and decided.reasons(4) == (R.OPEN_OPERATION,)
    assert decided.prunable == (1, 3, 5)


def test_a_version_under_shadow_test_or_held_by_triton_is_kept() -> None:
    decided = _decide(range(1, 6), under_test=(3,), loaded=(2,))
    assert decided.reasons(3) == (R.CANDIDATE,) and decided.reasons(2) == (R.LOADED,)
    assert decided.prunable == (1, 4)


def test_the_highest_number_is_always_kept_so_it_is_never_filed_again() -> None:
    decided = _decide([1, 2, 5], keep=1, served=1, resident=(1,))
    assert decided.reasons(5) == (R.NEWEST,) and decided.prunable == (2,)


def test_verification_does_not_matter_quarantined_and_failed_versions_are_prunable() -> None:
    # The decision takes no statuses at all: whatever is not kept for a reason above may go.
    decided = _decide(range(1, 5), served=4, resident=(4,), last_verified=None)
    assert decided.prunable == (1, 2, 3)


def test_nothing_filed_keeps_nothing_and_prunes_nothing() -> None:
    decided = _decide([], keep=3)
    assert decided.kept == () and decided.prunable == ()


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_keep_must_be_an_integer_of_at_least_one(keep: object) -> None:
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        _decide([1, 2], keep=keep)


def test_the_retention_policy_is_off_by_default() -> None:
    assert build_policies({}, "policy.yaml").retention == RetentionPolicy(enabled=False, keep=3, every_s=3600.0)
    built = build_policies({"retention": {"enabled": True, "keep": 2, "every_s": 60}}, "policy.yaml")
    assert built.retention == RetentionPolicy(enabled=True, keep=2, every_s=60.0)


@pytest.mark.parametrize(("raw", "says"), [
    ({"keep": 0}, "keep must be an integer >= 1"),
    ({"keep": 2.5}, "keep must be an integer, not 2.5"),
    ({"keep": True}, "keep must be an integer, not True"),
    ({"every_s": 0}, "every_s must be a number > 0"),
    ({"every_s": float("nan")}, "every_s must be a number, not NaN"),
    ({"every_s": float("inf")}, "every_s must be a number > 0"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"kept": 3}, "unknown setting(s) kept"),
])
def test_a_bad_retention_setting_is_refused_with_its_name(raw: dict[str, object], says: str) -> None:
    with pytest.raises(PolicyError, match=f"policy.yaml retention: .*{says.replace('(', '.').replace(')', '.')}"):
        build_policies({"retention": raw}, "policy.yaml")
