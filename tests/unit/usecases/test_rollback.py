"""Rollback on the twin: to the resident last verified version it is a policy that drops the served one
(no load); verified targets only unless forced (mirrors tests/integration/test_rollback.py)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import Busy, PolicyViolation
from orchestrator.store.lock import model_lock

from .conftest import MODEL, Env


def test_rollback_to_the_resident_last_verified_version_is_a_policy_removal(env: Env) -> None:
    env.promote_better()
    orch = env.orchestrator()
    loads_before = list(env.backends.loads)
    seen: list[dict[int, str]] = []
    load = orch.triton.load

    def watched_load(model: str, config_json: str | None = None) -> None:
        seen.append(env.states())
        load(model, config_json)
        seen.append(env.states())

    orch.triton.load = watched_load  # type: ignore[method-assign]
    result = orch.rollback(MODEL, reason="operator saw false alarms")
    assert (result.from_version, result.to_version, result.resident, result.changed) == (2, 1, (1,), True)
    assert env.backends.loads == loads_before  # nothing instantiated: v1 was already there
    assert seen and all(states[1] == "READY" for states in seen)  # v1 served throughout
    assert env.served_by_twin() == 1
    assert env.states() == {1: "READY", 2: "UNAVAILABLE"}
    assert env.store().resident() == (1,)
    assert env.status(2) == "rolled_back"
    assert env.store().attestation(2).verification.reason == "operator saw false alarms"
    assert env.outcomes("rollback") == ["started", "switched", "succeeded"]
    last = env.last()
    assert (last.action, last.result, last.from_version, last.to_version, last.reason) == \
        ("rollback", "succeeded", 2, 1, "operator saw false alarms")
    assert last.details["resident"] == [1] and last.details["quarantine"] is False


def test_a_quarantining_rollback_records_its_evidence(env: Env) -> None:
    env.promote_better()
    evidence: dict[str, Any] = {"rule": "output_sanity", "detail": "LOGITS has 40 NaN of 40"}
    env.orchestrator().rollback(MODEL, reason="watch: output_sanity", quarantine=True, evidence=evidence)
    assert env.status(2) == "quarantined" and env.served_by_twin() == 1
    started, last = [r for r in env.records() if r.action == "rollback" and r.result in ("started", "succeeded")]
    for record in (started, last):
        assert record.details["quarantine"] is True and record.details["evidence"] == evidence
    assert last.reason == "watch: output_sanity"
    with pytest.raises(PolicyViolation, match="quarantined"):
        env.orchestrator().promote(MODEL, 2)


def test_rollback_to_a_version_that_is_not_verified_needs_force(env: Env) -> None:
    env.promote_better()
    env.orchestrator().rollback(MODEL)
    with pytest.raises(PolicyViolation, match="v2 is rolled_back, not verified: roll back to it only with --force"):
        env.orchestrator().rollback(MODEL, to=2)
    assert env.served_by_twin() == 1
    result = env.orchestrator().rollback(MODEL, to=2, force=True)
    assert (result.from_version, result.to_version) == (1, 2)
    assert env.served_by_twin() == 2
    assert env.status(1) == "rolled_back"  # the verified version rolled back from
    assert env.status(2) == "rolled_back"  # forcing never verifies


def test_nothing_to_roll_back_to_is_a_policy_violation(env: Env) -> None:
    with pytest.raises(PolicyViolation, match="classifier has no verified version other than v1 to roll back to"):
        env.orchestrator().rollback(MODEL)
    assert env.records() == () and env.served_by_twin() == 1


def test_rollback_to_the_served_version_changes_nothing(env: Env) -> None:
    env.promote_better()
    env.orchestrator().rollback(MODEL)
    before = env.files()
    result = env.orchestrator().rollback(MODEL, to=1)
    assert (result.from_version, result.to_version, result.changed) == (1, 1, False)
    assert env.files() == before and env.served_by_twin() == 1


def test_rollback_to_a_version_that_is_not_resident_loads_it_first(env: Env) -> None:
    env.promote_better()
    env.import_()
    env.orchestrator().promote(MODEL, 3)
    assert env.store().resident() == (2, 3)
    result = env.orchestrator().rollback(MODEL, to=1)
    assert (result.from_version, result.to_version, result.resident) == (3, 1, (1,))
    assert env.backends.loads[-1] == (MODEL, 1)  # instantiated again
    assert env.served_by_twin() == 1
    assert env.states() == {1: "READY", 2: "UNAVAILABLE", 3: "UNAVAILABLE"}
    assert env.status(3) == "rolled_back" and env.status(2) == "verified"


def test_a_second_command_on_a_busy_model_is_refused(env: Env) -> None:
    env.promote_better()
    with model_lock(env.store().state, MODEL, timeout_s=1), \
            pytest.raises(Busy, match="model 'classifier' is busy"):
        env.orchestrator(lock_timeout_s=0.1).rollback(MODEL)
    assert env.served_by_twin() == 2 and env.outcomes("rollback") == []
