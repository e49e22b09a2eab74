from orchestrator.core.switch import fallback_order, plan_switch
from orchestrator.store.metafile import VersionStatus

V, R, F, Q = VersionStatus.VERIFIED, VersionStatus.ROLLED_BACK, VersionStatus.FAILED, VersionStatus.QUARANTINED


def test_promote_newer_loads_beside_then_drops_extras():
    plan = plan_switch(current=[1, 2], target=3, fallbacks=[2, 1], keep_resident=1)
    assert plan.steps == ((1, 2, 3), (2, 3))
    assert plan.switch_step == 0  # v3 serves as soon as it is READY


def test_rollback_to_resident_version_is_removal_only():
    plan = plan_switch(current=[2, 3], target=2, fallbacks=[1], keep_resident=1)
    assert plan.steps[0] == (2,)
    assert plan.switch_step == 0
    assert plan.final == (1, 2)  # the next fallback is loaded after the switch


def test_switch_to_older_unloaded_version_loads_it_first():
    plan = plan_switch(current=[3], target=1, fallbacks=[], keep_resident=1)
    assert plan.steps == ((1, 3), (1,))
    assert plan.switch_step == 1


def test_fallbacks_above_target_are_never_resident():
    plan = plan_switch(current=[2, 3], target=2, fallbacks=[3, 1], keep_resident=2)
    assert all(max(step) == 2 for step in plan.steps)
    assert plan.final == (1, 2)


def test_keep_resident_zero_keeps_only_the_served_version():
    plan = plan_switch(current=[1], target=2, fallbacks=[1], keep_resident=0)
    assert plan.steps == ((1, 2), (2,))


def test_already_in_place_is_one_unchanged_step():
    plan = plan_switch(current=[2, 3], target=3, fallbacks=[2], keep_resident=1)
    assert plan.steps == ((2, 3),)


def test_fallback_order_prefers_most_recently_served_verified():
    statuses = {1: V, 2: V, 3: R, 4: F, 5: Q, 6: V}
    assert fallback_order([1, 2, 3, 2, 6], statuses, exclude=6) == [2, 1]
    assert fallback_order([], {1: V, 2: V}, exclude=2) == [1]
    assert fallback_order([1, 3], {1: V, 3: Q}, exclude=1) == []
