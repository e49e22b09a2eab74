"""Gates: summed counters, minimum samples, inconclusive never passes, failures told early, the label that explains."""

from __future__ import annotations

import pytest

from orchestrator.fleet.gates import FAILED, IN_PROGRESS, VERIFIED, Member, Usage, Verdict, assess, attribute, evaluate
from orchestrator.fleet.plan import Gate

ERRORS = Gate("errors", "error_rate", max=0.01, min_sample=100)
VERIFIED_GATE = Gate("verified", "verified_ratio", min=0.9)


def _m(name: str, outcome: str = VERIFIED, requests: int = 0, errors: int = 0, hw: str = "nx", **kw: object) -> Member:
    return Member(name, {"hw": hw, "site": "a"}, outcome, Usage(requests=requests, errors=errors), **kw)  # type: ignore[arg-type]


def test_ratios_come_from_summed_counters_not_a_mean_of_ratios() -> None:
    # Mean of per-device rates would be 0.5; the fleet served 10,010 requests with 5 errors.
    members = [_m("a", requests=10, errors=5), _m("b", requests=10_000, errors=0)]
    result = evaluate(ERRORS, members, [], complete=True)
    assert result.verdict is Verdict.PASS and result.value == pytest.approx(5 / 10_010) and result.sample == 10_010


def test_below_the_minimum_sample_is_inconclusive_even_with_zero_errors() -> None:
    result = evaluate(ERRORS, [_m("a", requests=99)], [], complete=True)
    assert result.verdict is Verdict.INCONCLUSIVE and "below the minimum 100" in result.detail
    no_traffic = evaluate(ERRORS, [_m("a")], [], complete=True)  # Flagger's trap: no traffic read as 0 errors
    assert no_traffic.verdict is Verdict.INCONCLUSIVE


def test_a_holding_gate_passes_only_once_the_wave_is_complete_but_fails_at_once() -> None:
    assert evaluate(ERRORS, [_m("a", requests=500)], [], complete=False).verdict is Verdict.INCONCLUSIVE
    assert evaluate(ERRORS, [_m("a", requests=500, errors=50)], [], complete=False).verdict is Verdict.FAIL


def test_verified_ratio_fails_as_soon_as_it_is_out_of_reach() -> None:
    going = [_m("a"), _m("b", IN_PROGRESS)] + [_m(f"c{i}", IN_PROGRESS) for i in range(8)]
    assert evaluate(VERIFIED_GATE, going, [], complete=False).verdict is Verdict.INCONCLUSIVE
    two_failed = [_m("x", FAILED), _m("y", FAILED), *going[:8]]
    result = evaluate(VERIFIED_GATE, two_failed, [], complete=False)
    assert result.verdict is Verdict.FAIL and "out of reach" in result.detail
    assert evaluate(VERIFIED_GATE, [_m(str(i)) for i in range(9)] + [_m("f", FAILED)], [],
                    complete=True).verdict is Verdict.PASS


def test_golden_diff_is_a_mean_over_the_devices_that_report_it() -> None:
    gate = Gate("quality", "golden_diff", min=-0.03, min_sample=2)
    assert evaluate(gate, [_m("a", golden_diff=-0.01)], [], True).verdict is Verdict.INCONCLUSIVE
    ok = evaluate(gate, [_m("a", golden_diff=-0.01), _m("b", golden_diff=0.0), _m("c")], [], True)
    assert ok.verdict is Verdict.PASS and ok.sample == 2
    assert evaluate(gate, [_m("a", golden_diff=-0.05), _m("b", golden_diff=-0.02)], [], True).verdict is Verdict.FAIL


def test_the_control_group_comparison() -> None:
    gate = Gate("vs-rest", "error_rate", compare="control", max_ratio=2.0, min_sample=1000)
    updated = [_m("a", requests=1000, errors=3)]
    control = [_m("c", IN_PROGRESS, requests=2000, errors=2)]
    ok = evaluate(gate, updated, control, complete=True)
    assert ok.verdict is Verdict.FAIL and ok.value == pytest.approx(3.0)
    assert evaluate(gate, [_m("a", requests=1000, errors=1)], control, True).verdict is Verdict.PASS
    thin = evaluate(gate, updated, [_m("c", IN_PROGRESS, requests=10)], True)
    assert thin.verdict is Verdict.INCONCLUSIVE  # a control group without enough traffic decides nothing
    # A control group without a single error: one error's worth is the floor, not a division by zero.
    clean = evaluate(gate, [_m("a", requests=1000, errors=1)], [_m("c", IN_PROGRESS, requests=1000)], True)
    assert clean.verdict is Verdict.PASS and clean.value == pytest.approx(1.0)


def test_in_the_last_wave_with_no_device_left_to_compare_with_the_comparison_stands_aside() -> None:
    gate = Gate("vs-rest", "error_rate", compare="control", max_ratio=2.0, min_sample=1000)
    updated = [_m("a", requests=1000, errors=1)]
    assert evaluate(gate, updated, [], complete=True).verdict is Verdict.INCONCLUSIVE  # an earlier wave: no control
    last = evaluate(gate, updated, [], complete=True, final=True)
    assert last.verdict is Verdict.PASS and "none left to compare with" in last.detail
    assert evaluate(gate, updated, [], complete=False, final=True).verdict is Verdict.INCONCLUSIVE
    # While any device of the last wave is still on the old version, it is compared as before.
    worse = evaluate(gate, [_m("a", requests=1000, errors=9)], [_m("c", IN_PROGRESS, requests=2000, errors=2)],
                     complete=True, final=True)
    assert worse.verdict is Verdict.FAIL


def test_attribution_names_the_label_whose_devices_fail_while_the_rest_hold() -> None:
    members = [_m(f"n{i}", FAILED, hw="nano") for i in range(4)] + [_m(f"x{i}") for i in range(26)]
    gates = [VERIFIED_GATE]
    assert assess(gates, members, [], complete=True).failed
    found = attribute(gates, members, [], complete=True)
    assert found is not None and found.selector == {"hw": "nano"}
    assert (found.failed_in, found.devices_in, found.failed_out, found.devices_out) == (4, 4, 0, 26)
    assert "hw=nano" in found.describe()


def test_no_attribution_when_failures_are_everywhere() -> None:
    members = [_m(f"n{i}", FAILED if i % 2 else VERIFIED, hw="nano" if i % 3 else "nx") for i in range(30)]
    assert attribute([VERIFIED_GATE], members, [], complete=True) is None


def _labelled(name: str, labels: dict[str, str], requests: int = 0, errors: int = 0,
              outcome: str = VERIFIED) -> Member:
    return Member(name, labels, outcome, Usage(requests=requests, errors=errors))


def test_attribution_blames_the_rare_hardware_not_a_larger_group_that_happens_to_hold_it() -> None:
    # The demo's case: three Nanos erroring, all in the "entrance" role. Alone they serve 45 requests, under
    # the gate's minimum sample of 50, so the Nano group cannot fail the gate on its own; the entrance group
    # (Nanos and healthy devices, 150 requests) can. The old rule picked the smallest group failing alone.
    errors = Gate("errors", "error_rate", max=0.02, min_sample=50)
    nanos = [_labelled(f"n{i}", {"hw": "nano", "role": "entrance"}, requests=15, errors=5) for i in range(3)]
    entrance = [_labelled(f"e{i}", {"hw": "nx", "role": "entrance"}, requests=15) for i in range(7)]
    rest = [_labelled(f"d{i}", {"hw": "nx", "role": "dock" if i % 2 else "line"}, requests=15) for i in range(20)]
    members = nanos + entrance + rest
    assert assess([errors], members, [], complete=True).failed
    assert not assess([errors], nanos, [], complete=True).failed  # inconclusive: 45 requests
    found = attribute([errors], members, [], complete=True)
    assert found is not None and found.selector == {"hw": "nano"}
    assert (found.failed_in, found.devices_in, found.failed_out, found.devices_out) == (3, 3, 0, 27)


def test_attribution_prefers_the_group_that_explains_every_failure_over_a_smaller_pure_one() -> None:
    # Two failing Nanos at site b and one at site a: site=b is pure but leaves a failure outside it.
    members = ([_labelled("n0", {"hw": "nano", "site": "a"}, outcome=FAILED)]
               + [_labelled(f"n{i}", {"hw": "nano", "site": "b"}, outcome=FAILED) for i in (1, 2)]
               + [_labelled(f"x{i}", {"hw": "nx", "site": "a" if i < 20 else "c"}) for i in range(27)])
    gate = Gate("failures", "failure_ratio", max=0.05)
    found = attribute([gate], members, [], complete=True)
    assert found is not None and found.selector == {"hw": "nano"}


def test_no_attribution_when_errors_are_spread_evenly_even_if_a_half_taken_out_starves_the_gate() -> None:
    # Every device errs alike; taking out either site leaves the rest under the minimum sample (inconclusive, not
    # failing), which must not read as "that site explains it".
    errors = Gate("errors", "error_rate", max=0.01, min_sample=100)
    members = [_labelled(f"{site}{i}", {"site": site}, requests=10, errors=1) for site in "ab" for i in range(8)]
    assert assess([errors], members, [], complete=True).failed
    assert not assess([errors], members[8:], [], complete=True).failed
    assert attribute([errors], members, [], complete=True) is None


def test_no_attribution_to_one_device_when_as_many_fail_elsewhere_in_a_small_wave() -> None:
    # The halt test's first wave: four devices of the erroring release, two erring so far, each in its own role.
    # Without d0 the rest holds (1 error in 60 requests), but d0 holds only half the failing devices: no block.
    errors = Gate("errors", "error_rate", max=0.02, min_sample=50)
    members = [_labelled(f"d{i}", {"role": f"r{i}", "hw": "nx"}, requests=20,
                          errors={0: 4, 1: 1}.get(i, 0)) for i in range(4)]
    assert assess([errors], members, [], complete=False).failed
    assert attribute([errors], members, [], complete=False) is None


def test_no_attribution_when_the_rest_is_too_thin_to_show_it_holds() -> None:
    errors = Gate("errors", "error_rate", max=0.02, min_sample=50)
    members = [_labelled(f"a{i}", {"site": "a"}, requests=10, errors=3) for i in range(2)] + \
        [_labelled(f"b{i}", {"site": "b"}, requests=10) for i in range(3)]
    assert assess([errors], members, [], complete=True).failed
    assert evaluate(errors, members[2:], [], complete=True).verdict is Verdict.INCONCLUSIVE  # 30 requests
    assert attribute([errors], members, [], complete=True) is None
    members += [_labelled(f"b{i}", {"site": "b"}, requests=10) for i in range(3, 5)]  # now 50 requests without a
    found = attribute([errors], members, [], complete=True)
    assert found is not None and found.selector == {"site": "a"}
