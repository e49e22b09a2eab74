"""The residency guard's decision with literal states: which versions config.pbtxt may make Triton load."""

from __future__ import annotations

import pytest

from orchestrator.core.model import VersionStatus
from orchestrator.core.residency import ResidencyDecision, guard_resident, refusal

V = VersionStatus
U, OK, FAILED, QUARANTINED, ROLLED_BACK = V.UNVERIFIED, V.VERIFIED, V.FAILED, V.QUARANTINED, V.ROLLED_BACK


def test_verified_versions_stay_and_nothing_is_rewritten() -> None:
    decision = guard_resident((1, 2), {1: OK, 2: OK, 3: U}, journal_served=(1, 2))
    assert decision == ResidencyDecision((1, 2), (1, 2))
    assert not decision.rewrite and not decision.refuse


def test_an_unverified_version_is_dropped_and_the_journal_served_one_kept() -> None:
    decision = guard_resident((1, 2, 3), {1: OK, 2: OK, 3: U}, journal_served=(1, 2))
    assert (decision.allowed, decision.dropped, decision.restored) == ((1, 2), ((3, U),), None)
    assert decision.rewrite and not decision.refuse
    assert decision.describe() == "config.pbtxt listed unverified v3 (hand-edited?); rewritten to v1, v2"


@pytest.mark.parametrize("status", [U, QUARANTINED, FAILED, ROLLED_BACK])
def test_the_version_the_journal_says_serves_stays_whatever_its_status(status: VersionStatus) -> None:
    # rollback --force put it there: the orchestrator's own choice, journaled.
    decision = guard_resident((1, 3), {1: OK, 2: OK, 3: status}, journal_served=(1, 2, 3))
    assert decision.allowed == (1, 3) and not decision.rewrite


def test_a_journal_served_version_that_no_longer_serves_may_not_come_back_by_hand() -> None:
    decision = guard_resident((1, 2), {1: OK, 2: U, 3: OK}, journal_served=(2, 3))
    assert decision.dropped == ((2, U),)
    assert decision.allowed == (1, 3) and decision.restored == 3  # v3 served last: it serves again


def test_a_bootstrap_adopts_what_the_config_serves() -> None:
    # No served version in the journal: the seed's unverified v1 keeps serving.
    decision = guard_resident((1,), {1: U}, journal_served=())
    assert decision == ResidencyDecision((1,), (1,))


def test_a_bootstrap_never_adopts_a_version_the_orchestrator_filed_unverified() -> None:
    # The seed v1 was there first; v2 came in through import and was never promoted.
    decision = guard_resident((1, 2), {1: U, 2: U}, journal_served=(), filed_here={2})
    assert (decision.allowed, decision.dropped) == ((1,), ((2, U),))


@pytest.mark.parametrize("status", [FAILED, QUARANTINED])
def test_a_bootstrap_never_adopts_a_version_judged_bad(status: VersionStatus) -> None:
    decision = guard_resident((1, 2), {1: U, 2: status}, journal_served=())
    assert decision.allowed == (1,) and decision.dropped == ((2, status),)


def test_dropping_the_served_version_brings_back_the_journal_served_one_not_an_older_fallback() -> None:
    # v3 served; the config was edited to list v4 (unverified) instead: v3 serves again, not v1.
    decision = guard_resident((1, 4), {1: OK, 2: OK, 3: OK, 4: U}, journal_served=(1, 3))
    assert (decision.allowed, decision.restored) == ((1, 3), 3)
    assert decision.describe() == ("config.pbtxt listed unverified v4 (hand-edited?); rewritten to v1, v3 "
                                   "(v3 served before)")


def test_a_verified_version_above_the_journal_served_one_keeps_serving() -> None:
    decision = guard_resident((1, 5, 6), {1: OK, 3: OK, 5: OK, 6: U}, journal_served=(1, 3))
    assert (decision.allowed, decision.restored) == ((1, 5), None)


def test_nothing_allowed_left_restores_the_journal_served_version_even_unverified() -> None:
    decision = guard_resident((4,), {1: OK, 3: U, 4: U}, journal_served=(1, 3))
    assert (decision.allowed, decision.restored, decision.refuse) == ((3,), 3, False)


@pytest.mark.parametrize("status", [QUARANTINED, FAILED])
def test_a_journal_served_version_judged_bad_is_not_brought_back(status: VersionStatus) -> None:
    decision = guard_resident((4,), {1: OK, 3: status, 4: U}, journal_served=(1, 3))
    assert (decision.allowed, decision.restored) == ((1,), None)  # the best verified version instead


def test_nothing_allowed_and_the_journal_served_version_gone_falls_back_to_the_best_verified() -> None:
    decision = guard_resident((5,), {1: OK, 2: OK, 5: U}, journal_served=(2, 3))  # v3's folder was removed
    assert (decision.allowed, decision.restored, decision.refuse) == ((2,), None, False)


def test_nothing_can_serve_is_a_refusal() -> None:
    decision = guard_resident((2, 3), {1: FAILED, 2: U, 3: U}, journal_served=(4,))
    assert decision.refuse and not decision.rewrite
    assert (decision.allowed, decision.dropped) == ((), ((2, U), (3, U)))
    message = refusal(decision, "/repo/m/config.pbtxt", (4,))
    assert message.startswith("/repo/m/config.pbtxt makes Triton load unverified v2, unverified v3;")
    assert "v4, which served last, cannot serve again" in message
    assert "restore its version_policy to a verified version" in message and "nothing was written" in message


def test_a_bootstrap_with_only_filed_unverified_versions_is_a_refusal() -> None:
    decision = guard_resident((2,), {1: FAILED, 2: U}, journal_served=(), filed_here={2})
    assert decision.refuse
    assert "the journal names no version that served" in refusal(decision, "c", ())


def test_an_empty_resident_set_has_nothing_to_guard() -> None:
    assert guard_resident((), {1: U}, journal_served=(1,)) == ResidencyDecision((), ())


def test_statuses_are_read_only_for_resident_versions_while_something_stays() -> None:
    class Lazy(dict[int, VersionStatus]):
        read: list[int] = []  # noqa: RUF012

        def __getitem__(self, version: int) -> VersionStatus:
            self.read.append(version)
            return super().__getitem__(version)

    statuses = Lazy({v: OK for v in range(1, 200)} | {200: U})
    assert guard_resident((199, 200), statuses, journal_served=(199,)).allowed == (199,)
    assert set(statuses.read) == {199, 200}
