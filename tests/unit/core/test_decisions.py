"""The pure decisions of repair, rollback and the watcher, with literal states: no disk, no server."""

from __future__ import annotations

import pytest

from orchestrator.core.journal import Action, History, Record, Result
from orchestrator.core.model import VersionStatus
from orchestrator.core.policy import Health, Severity
from orchestrator.core.repair import RepairKind, decide_repair
from orchestrator.core.rules import Anomaly, Finding, Observation, assess
from orchestrator.core.switch import rollback_target, served_history, status_after_rollback
from orchestrator.core.verdict import Outcome
from orchestrator.core.watch_decision import Response, decide, decide_check
from orchestrator.errors import PolicyViolation

V = VersionStatus


def started(action: str, to: int | None, frm: int | None = 1, **details: object) -> Record:
    return Record(action, Result.STARTED, "op1", actor="t", from_version=frm, to_version=to, details=dict(details))


@pytest.mark.parametrize(("filed", "kind"), [(True, RepairKind.IMPORT_FILED), (False, RepairKind.IMPORT_LOST)])
def test_an_interrupted_import_is_done_when_its_folder_exists(filed: bool, kind: RepairKind) -> None:
    decision = decide_repair(started("import", 2, None), filed=filed, served=1, target_status=None, resident=(1,))
    assert decision.kind is kind


def test_an_import_with_no_version_recorded_left_nothing() -> None:
    decision = decide_repair(started("import", None, None), filed=True, served=1, target_status=None, resident=(1,))
    assert decision.kind is RepairKind.IMPORT_LOST


def test_an_interrupted_reconcile_or_shadow_is_closed() -> None:
    for action in ("reconcile", "shadow"):
        assert decide_repair(started(action, 2), filed=False, served=1, target_status=None,
                             resident=(1,)).kind is RepairKind.CLOSE


def test_a_promote_whose_policy_was_written_after_verification_is_completed() -> None:
    decision = decide_repair(started("promote", 2, resident_before=[1]), filed=False, served=2,
                             target_status=V.VERIFIED, resident=(1, 2))
    assert decision.kind is RepairKind.COMPLETE_SWITCH and decision.switched
    assert decision.mark_rolled_back is None


def test_a_promote_serving_an_unverified_target_is_undone() -> None:
    """The policy can name an unverified target only if someone else wrote it: go back."""
    decision = decide_repair(started("promote", 2, resident_before=[1]), filed=False, served=2,
                             target_status=V.UNVERIFIED, resident=(1, 2))
    assert decision.kind is RepairKind.UNDO_SWITCH and decision.restore == (1,)


def test_a_promote_interrupted_before_the_switch_restores_the_old_policy_only_when_it_changed() -> None:
    moved = decide_repair(started("promote", 2, resident_before=[1]), filed=False, served=1,
                          target_status=V.VERIFIED, resident=(1, 3))
    assert moved.kind is RepairKind.UNDO_SWITCH and moved.restore == (1,)
    same = decide_repair(started("promote", 2, resident_before=[1]), filed=False, served=1,
                         target_status=V.VERIFIED, resident=(1,))
    assert same.kind is RepairKind.UNDO_SWITCH and same.restore == ()


def test_a_rollback_past_its_switch_is_completed_and_marks_what_it_left() -> None:
    decision = decide_repair(started("rollback", 1, 2, quarantine=True, resident_before=[1, 2]), filed=False,
                             served=1, target_status=V.ROLLED_BACK, resident=(1,))
    assert decision.kind is RepairKind.COMPLETE_SWITCH
    assert decision.mark_rolled_back == 2 and decision.quarantine


def test_rollback_target_is_the_best_fallback_unless_one_is_named() -> None:
    assert rollback_target("m", 3, None, [2, 1], None, force=False) == 2
    assert rollback_target("m", 3, 1, [2, 1], V.VERIFIED, force=False) == 1
    assert rollback_target("m", 3, 3, [2], V.VERIFIED, force=False) == 3  # already served: settle


@pytest.mark.parametrize(("served", "requested", "fallbacks", "status", "message"), [
    (None, None, [], None, "serves nothing"),
    (3, None, [], None, "no verified version other than v3"),
    (3, 2, [], V.FAILED, "v2 is failed, not verified"),
    (3, 2, [], V.QUARANTINED, "v2 is quarantined, not verified"),
])
def test_rollback_target_refuses_with_the_reason(served: int | None, requested: int | None, fallbacks: list[int],
                                                 status: VersionStatus | None, message: str) -> None:
    with pytest.raises(PolicyViolation, match=message):
        rollback_target("m", served, requested, fallbacks, status, force=False)


def test_force_rolls_back_to_a_version_that_is_not_verified() -> None:
    assert rollback_target("m", 3, 2, [], V.FAILED, force=True) == 2


@pytest.mark.parametrize(("status", "quarantine", "after"), [
    (V.VERIFIED, False, V.ROLLED_BACK),
    (V.VERIFIED, True, V.QUARANTINED),
    (V.UNVERIFIED, True, V.QUARANTINED),  # forced in, then misbehaved: never again without --force
    (V.UNVERIFIED, False, None),
    (V.FAILED, False, None),
    (V.QUARANTINED, False, None),  # quarantine is never lifted by a rollback
])
def test_what_a_rolled_back_version_becomes(status: VersionStatus, quarantine: bool,
                                            after: VersionStatus | None) -> None:
    assert status_after_rollback(status, quarantine) is after


def test_served_history_follows_completed_switches_only() -> None:
    records = (
        Record("promote", Result.SUCCEEDED, "a", from_version=1, to_version=2),
        Record("promote", Result.FAILED, "b", from_version=2, to_version=3),
        Record("rollback", Result.REPAIRED, "c", from_version=2, to_version=1),
        Record("reconcile", Result.SUCCEEDED, "d", from_version=None, to_version=1),
    )
    assert served_history(History(records)) == [1, 2, 1, 1]


def anomaly(severity: Severity, rule: str = "output_sanity", detail: str = "LOGITS has 4 NaN of 40") -> Anomaly:
    finding = Finding(rule, Outcome.BREACH, detail, {"nan": 4.0})
    return Anomaly(rule, severity, finding, first_breach=10.0, decided=10.05)


def test_a_rollback_anomaly_rolls_the_judged_version_back() -> None:
    action = decide(anomaly(Severity.ROLLBACK), served=2, gave_up_on=None)
    assert action.response is Response.ROLLBACK and action.judged == 2
    assert action.reason == "watch: output_sanity: LOGITS has 4 NaN of 40"
    assert action.evidence["detection_latency_ms"] == 50.0 and action.evidence["served"] == 2


def test_an_alert_anomaly_or_a_version_with_nowhere_to_go_only_alerts() -> None:
    assert decide(anomaly(Severity.ALERT), served=2, gave_up_on=None).response is Response.ALERT
    assert decide(anomaly(Severity.ROLLBACK), served=2, gave_up_on=2).response is Response.ALERT
    # A newer version serves since the watcher gave up on v2: it is judged afresh.
    assert decide(anomaly(Severity.ROLLBACK), served=3, gave_up_on=2).response is Response.ROLLBACK


def test_closed_sets_know_their_final_values() -> None:
    assert {r for r in Result if r.is_final} == {Result.SUCCEEDED, Result.FAILED, Result.REFUSED, Result.REPAIRED,
                                                 Result.ABORTED, Result.ALERT}
    assert Action.PROMOTE.switches and Action.ROLLBACK.switches and not Action.IMPORT.switches
    assert not Outcome.INCONCLUSIVE.is_final and Outcome.PASSED.is_final and Outcome.OK is Outcome.PASSED
    with pytest.raises(ValueError):
        Record("promotee", Result.STARTED, "x")  # a typo fails here, not in the journal


def test_one_check_rolls_back_once_whatever_the_number_of_rules_that_breached() -> None:
    """A second rollback would judge the fallback on the bad version's evidence."""
    check = [anomaly(Severity.ROLLBACK), anomaly(Severity.ALERT, "resources", "CPU 99%"),
             anomaly(Severity.ROLLBACK, "divergence", "top-1 agreement 0.10")]
    actions = decide_check(check, served=3, gave_up_on=None)
    assert [a.response for a in actions] == [Response.ROLLBACK, Response.ALERT]
    rollback = actions[0]
    assert rollback.rules == ("output_sanity", "divergence") and rollback.judged == 3
    assert rollback.evidence["rule"] == "output_sanity"
    assert rollback.evidence["also_breached"] == {"divergence": "top-1 agreement 0.10"}
    assert decide_check([], served=3, gave_up_on=None) == []


@pytest.mark.parametrize(("live", "ready", "switching", "outcome"), [
    (True, True, False, Outcome.OK),
    (True, False, False, Outcome.BREACH),
    (True, False, True, Outcome.INCONCLUSIVE),  # a command between its config write and Triton's load
    (True, None, False, Outcome.INCONCLUSIVE),
    (False, False, False, Outcome.INCONCLUSIVE),  # Triton down: no rollback can help
])
def test_health_judges_a_not_ready_served_version_only_when_no_command_is_switching(
        live: bool, ready: bool | None, switching: bool, outcome: Outcome) -> None:
    finding = assess("health", Health(), Observation(time=0.0, live=live, served_ready=ready, switching=switching))
    assert finding.outcome is outcome and (finding.detail != "") is (outcome is not Outcome.OK)
