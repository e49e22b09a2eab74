"""The rollout's step: waves, deadlines, the halt that reverts every told device, the block that spares the rest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from orchestrator.fleet.documents import INSTALL, REVERT
from orchestrator.fleet.gates import Usage
from orchestrator.fleet.rollout import (
    DeviceState,
    DeviceView,
    Event,
    Phase,
    Rollout,
    Step,
    block,
    on_event,
    pause,
    resume,
    start,
    step,
)

from .planning import fleet, plan

STRICT = [{"metric": "verified_ratio", "min": 0.95}]


def _answer(rollout: Rollout, devices: Iterable[str], kind: str, at: float, version: int | None = 2,
            detail: str = "") -> Rollout:
    for device in devices:
        rollout, _ = on_event(rollout, Event(device, kind, at, version, detail))
    return rollout


def _serve(views: dict[str, DeviceView], devices: Iterable[str], requests: int = 1000, errors: int = 0) -> None:
    for d in devices:
        views[d] = replace(views[d], served=2, usage={**views[d].usage, 2: Usage(requests=requests, errors=errors)})


def _install(rollout: Rollout, views: dict[str, DeviceView], s: Step, at: float, bad: set[str] = frozenset(),
             errors: int = 0) -> Rollout:
    """Every device told to install answers: applying, then serving (or failed when in ``bad``)."""
    told = [t.device for t in s.tells if t.intent == INSTALL]
    rollout = _answer(rollout, told, "applying", at)
    good = [d for d in told if d not in bad]
    rollout = _answer(rollout, good, "serving", at + 1)
    rollout = _answer(rollout, [d for d in told if d in bad], "failed", at + 1, detail="golden set: NaN")
    _serve(views, good, errors=errors)
    return rollout


def _states(rollout: Rollout) -> dict[DeviceState, int]:
    counts: dict[DeviceState, int] = {}
    for a in rollout.assignments.values():
        counts[a.state] = counts.get(a.state, 0) + 1
    return counts


def test_a_good_release_goes_through_four_waves() -> None:
    views = fleet(100)
    rollout = start(plan(), views, now=0.0)
    now, told_per_wave = 0.0, []
    for _ in range(4):
        s = step(rollout, views, now)
        rollout = s.rollout
        told_per_wave.append(len(s.tells))
        rollout = _install(rollout, views, s, now)
        now += 101  # the bake
        rollout = _answer(rollout, [t.device for t in s.tells], "verified", now)
        now += 1
    final = step(rollout, views, now)
    assert told_per_wave == [10, 20, 30, 40]
    assert final.rollout.phase is Phase.SUCCEEDED and final.rollout.assessment.passed
    assert _states(final.rollout) == {DeviceState.VERIFIED: 100}


def test_a_wave_its_canary_already_covered_is_passed_through_not_waited_on() -> None:
    views = fleet(20)
    canary = {"site": ["s0", "s1"]}  # 14 of 20 devices: more than the next wave's 30 %
    rollout = start(plan(waves=[{"selector": canary}, {"percent": 30}, {"percent": 100}],
                         gates=[{"metric": "verified_ratio", "min": 0.9}]), views, now=0.0)
    assert sum(a.wave == 1 for a in rollout.assignments.values()) == 0
    s = step(rollout, views, 0.0)
    rollout = _install(s.rollout, views, s, 0.0)
    rollout = _answer(rollout, [t.device for t in s.tells], "verified", 101.0)
    s = step(rollout, views, 102.0)  # the canary passed: wave 2 has no device of its own
    s = step(s.rollout, views, 103.0)
    assert s.rollout.wave == 2 and len(s.tells) == 6


def test_a_device_silent_after_being_told_fails_and_never_passes() -> None:
    views = fleet(10)
    rollout = start(plan(waves=[{"percent": 100}]), views, now=0.0)
    s = step(rollout, views, 0.0)
    quiet = s.tells[0].device
    rollout = _install(s.rollout, views, replace(s, tells=s.tells[1:]), 1.0)
    rollout = _answer(rollout, [t.device for t in s.tells[1:]], "verified", 102.0)
    s = step(rollout, views, 31.0)  # past ack_s (30) for the quiet one
    assert s.rollout.assignments[quiet].state is DeviceState.FAILED
    assert "silent 30 s after being told" in s.rollout.assignments[quiet].detail
    # 9 of 10 verified meets the 0.9 gate; the quiet device counted as failed, not as passed.
    s = step(s.rollout, views, 103.0)
    assert s.rollout.phase is Phase.SUCCEEDED


def test_a_device_that_has_not_reported_yet_waits_and_fails_only_after_the_ack_deadline() -> None:
    views = fleet(10)
    late = "d0003"
    views[late] = replace(views[late], served=None, usage={})  # enrolled, no report yet
    rollout = start(plan(waves=[{"percent": 100}], defaults={"max_unavailable": 10}), views, now=0.0)
    s = step(rollout, views, 0.0)
    assert late not in {t.device for t in s.tells} and s.rollout.assignments[late].state is DeviceState.PENDING
    views[late] = replace(views[late], served=1)  # its first report
    s = step(s.rollout, views, 5.0)
    assert [t.device for t in s.tells] == [late] and s.rollout.assignments[late].prev_version == 1
    # One that never reports fails once the wave has run for ack_s (30), never passes.
    views = fleet(10)
    views[late] = replace(views[late], served=None, usage={})
    s = step(start(plan(waves=[{"percent": 100}], defaults={"max_unavailable": 10}), views, now=0.0), views, 0.0)
    assert s.rollout.assignments[late].state is DeviceState.PENDING
    rollout = _install(s.rollout, views, s, 1.0)
    rollout = _answer(rollout, [t.device for t in s.tells], "verified", 20.0)
    s = step(rollout, views, 31.0)
    assert s.rollout.assignments[late].state is DeviceState.FAILED
    assert "never reported what it serves within 30 s" in s.rollout.assignments[late].detail


def test_a_failing_gate_halts_and_every_told_device_reverts() -> None:
    views = fleet(100)
    rollout = start(plan(), views, now=0.0)
    s = step(rollout, views, 0.0)
    rollout = _install(s.rollout, views, s, 0.0, errors=50)  # 5 % errors on every updated device
    halted = step(rollout, views, 5.0)
    assert halted.rollout.phase is Phase.HALTED and "errors" in halted.rollout.reason
    reverts = {t.device: t.revert_to for t in halted.tells}
    assert set(reverts) == {t.device for t in s.tells} and set(reverts.values()) == {1}
    assert all(t.intent == REVERT for t in halted.tells)
    # Reverted devices settle; a silent one is flagged overdue and keeps its retained document.
    first, *others = sorted(reverts)
    rollout = _answer(halted.rollout, others, "reverted", 6.0)
    later = step(rollout, views, 60.0)
    assert later.rollout.assignments[first].state is DeviceState.REVERTING and later.rollout.assignments[first].overdue
    assert later.tells == () and later.rollout.phase is Phase.HALTED
    back = _answer(later.rollout, [first], "reverted", 3600.0)
    assert _states(back) == {DeviceState.REVERTED: 10, DeviceState.PENDING: 90}


def test_failures_on_one_label_revert_that_label_and_propose_a_block() -> None:
    views = fleet(100, nano_every=10)  # d0000, d0010, ...: 10 % nano
    p = plan(waves=[{"percent": 30}, {"percent": 100}], spread=["hw"], gates=STRICT)
    rollout = start(p, views, now=0.0)
    s = step(rollout, views, 0.0)
    nano = {d for d in (t.device for t in s.tells) if views[d].labels["hw"] == "jetson-nano"}
    assert len(nano) == 3 and len(s.tells) == 30
    rollout = _install(s.rollout, views, s, 0.0, bad=nano)
    proposed = step(rollout, views, 5.0)
    assert proposed.rollout.phase is Phase.BLOCK_PROPOSED
    assert proposed.rollout.attribution is not None and proposed.rollout.attribution.selector == {"hw": "jetson-nano"}
    assert {t.device for t in proposed.tells} == nano and all(t.intent == REVERT for t in proposed.tells)
    assert "orchestrate fleet block r1" in proposed.lines[-1]
    # The others keep baking; nothing new is told while a person decides.
    rollout = _answer(proposed.rollout, nano, "reverted", 6.0)
    assert step(rollout, views, 7.0).tells == ()
    blocked = block(rollout, views, ("hw", "jetson-nano"), 8.0)
    skipped = [a for a in blocked.rollout.assignments.values() if a.state is DeviceState.SKIPPED]
    assert len(skipped) == 7 and blocked.rollout.phase is Phase.RUNNING
    rollout = _answer(blocked.rollout, [t.device for t in s.tells if t.device not in nano], "verified", 110.0)
    s2 = step(rollout, views, 111.0)
    assert len(s2.tells) == 63 and not {t.device for t in s2.tells} & {d for d in views if d.endswith("0")}


def test_production_errors_on_a_rare_hardware_are_put_on_it_and_the_block_lets_the_rest_succeed() -> None:
    # The fleet demo's release: Nanos pass every local check, then err on client traffic. The wave's three Nanos
    # alone serve too few requests for the error gate's minimum sample, and all of them sit in role=entrance with
    # healthy devices: the block must still name the hardware, and once it is in force the rest goes on.
    views = fleet(100, nano_every=10)
    nanos = {d for d, v in views.items() if v.labels["hw"] == "jetson-nano"}
    for i, d in enumerate(sorted(views)):
        role = "entrance" if d in nanos or i % 4 == 1 else "line"
        views[d] = replace(views[d], labels={**views[d].labels, "role": role})
    gates = [{"name": "verified", "metric": "verified_ratio", "min": 0.95},
             {"name": "errors", "metric": "error_rate", "max": 0.02, "min_sample": 50}]
    rollout = start(plan(waves=[{"percent": 30}, {"percent": 100}], spread=["hw"], gates=gates), views, 0.0)
    s = step(rollout, views, 0.0)
    told = [t.device for t in s.tells]
    wave_nanos = nanos & set(told)
    assert len(wave_nanos) == 3
    rollout = _install(s.rollout, views, s, 0.0)
    _serve(views, told, requests=15)
    _serve(views, wave_nanos, requests=15, errors=5)
    proposed = step(rollout, views, 5.0)
    assert proposed.rollout.phase is Phase.BLOCK_PROPOSED
    assert proposed.rollout.attribution is not None and proposed.rollout.attribution.selector == {"hw": "jetson-nano"}
    rollout = _answer(proposed.rollout, wave_nanos, "reverted", 6.0)
    rollout = block(rollout, views, ("hw", "jetson-nano"), 7.0).rollout
    rollout = _answer(rollout, [d for d in told if d not in nanos], "verified", 110.0)
    s2 = step(rollout, views, 111.0)
    assert s2.rollout.wave == 1 and s2.rollout.phase is Phase.RUNNING
    assert s2.tells and not {t.device for t in s2.tells} & nanos
    rollout = _install(s2.rollout, views, s2, 112.0)
    _serve(views, [t.device for t in s2.tells], requests=15)
    rollout = _answer(rollout, [t.device for t in s2.tells], "verified", 220.0)
    done = step(rollout, views, 221.0)
    assert done.rollout.phase is Phase.SUCCEEDED, done.rollout.assessment
    assert _states(done.rollout) == {DeviceState.VERIFIED: 90, DeviceState.REVERTED: 3, DeviceState.SKIPPED: 7}


def test_on_label_failure_block_blocks_by_itself_and_goes_on() -> None:
    views = fleet(100, nano_every=10)
    rollout = start(plan(waves=[{"percent": 30}, {"percent": 100}], spread=["hw"], on_label_failure="block",
                         gates=STRICT),
                    views, 0.0)
    s = step(rollout, views, 0.0)
    nano = {t.device for t in s.tells if views[t.device].labels["hw"] == "jetson-nano"}
    rollout = _install(s.rollout, views, s, 0.0, bad=nano)
    went_on = step(rollout, views, 5.0)
    assert went_on.block is not None and went_on.block.selector == {"hw": "jetson-nano"}
    assert went_on.rollout.phase is Phase.RUNNING and went_on.rollout.blocked == (("hw", "jetson-nano"),)


def test_gates_without_enough_data_pause_instead_of_passing() -> None:
    views = fleet(10)
    rollout = start(plan(waves=[{"percent": 50}, {"percent": 100}]), views, 0.0)
    s = step(rollout, views, 0.0)
    rollout = _install(s.rollout, views, s, 0.0)
    for d in (t.device for t in s.tells):
        views[d] = replace(views[d], usage={2: Usage(requests=3)})  # 15 requests: below min_sample 100
    rollout = _answer(rollout, [t.device for t in s.tells], "verified", 101.0)
    waiting = step(rollout, views, 102.0)
    assert waiting.rollout.phase is Phase.RUNNING and waiting.tells == ()
    paused = step(waiting.rollout, views, 300.0)
    assert paused.rollout.phase is Phase.PAUSED and "inconclusive" in paused.rollout.reason
    resumed, _ = resume(paused.rollout, 301.0)
    assert resumed.phase is Phase.RUNNING


def test_an_approval_wave_waits_for_resume() -> None:
    views = fleet(10)
    rollout = start(plan(waves=[{"percent": 50}, {"percent": 100, "approval": True}]), views, 0.0)
    s = step(rollout, views, 0.0)
    rollout = _answer(_install(s.rollout, views, s, 0.0), [t.device for t in s.tells], "verified", 101.0)
    waiting = step(rollout, views, 102.0)
    assert waiting.rollout.phase is Phase.AWAITING_APPROVAL and waiting.tells == ()
    approved, lines = resume(waiting.rollout, 103.0)
    assert approved.phase is Phase.RUNNING and approved.wave == 1 and "started" in lines[0]
    assert len(step(approved, views, 104.0).tells) == 5


def test_max_unavailable_limits_devices_installing_at_once_and_online_ones_go_first() -> None:
    views = fleet(20)
    views["d0000"] = replace(views["d0000"], online=False)
    rollout = start(plan(waves=[{"percent": 100, "max_unavailable": 3}]), views, 0.0)
    s = step(rollout, views, 0.0)
    assert len(s.tells) == 3 and "d0000" not in {t.device for t in s.tells}
    assert step(s.rollout, views, 1.0).tells == ()
    rollout = _install(s.rollout, views, s, 1.0)
    assert len(step(rollout, views, 3.0).tells) == 3


def test_a_paused_rollout_tells_nobody_but_still_halts_on_a_failure() -> None:
    views = fleet(20)
    rollout = start(plan(), views, 0.0)
    s = step(rollout, views, 0.0)
    rollout = pause(_install(s.rollout, views, s, 0.0), "operator")
    assert step(rollout, views, 2.0).tells == ()
    _serve(views, [t.device for t in s.tells], errors=500)
    assert step(rollout, views, 3.0).rollout.phase is Phase.HALTED


def test_events_about_other_states_change_nothing() -> None:
    views = fleet(10)
    rollout = start(plan(), views, 0.0)
    same, line = on_event(rollout, Event("d0001", "verified", 1.0))  # never told
    assert same is rollout and line is None
    assert on_event(rollout, Event("nobody", "applying", 1.0))[0] is rollout
