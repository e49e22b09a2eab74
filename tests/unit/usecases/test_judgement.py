"""The watcher acts on what it judged: a rollback names the version it judged and happens only if that version
still serves; and the loop breaker stops it rolling back once rolling back is not helping (on the twin)."""

from __future__ import annotations

import pytest

from orchestrator.core.policy import PolicyError, parse_watch_policy
from orchestrator.errors import RepositoryCorrupt, StaleJudgement
from orchestrator.sample import Variant

from .conftest import MODEL, Env, nan_logits


def test_a_rollback_of_a_version_that_no_longer_serves_is_dropped_and_journaled(env: Env) -> None:
    env.promote_better()  # v2 serves
    env.orchestrator().rollback(MODEL)  # an operator moved it back to v1 meanwhile
    with pytest.raises(StaleJudgement, match="v2 was judged, but v1 serves now"):
        env.orchestrator(actor="watch").rollback(MODEL, reason="watch: output_sanity", quarantine=True,
                                                  evidence={"rule": "output_sanity"}, judged=2)
    assert env.served_by_twin() == 1 and env.store().served() == 1
    assert env.status(2) == "rolled_back"  # not quarantined on evidence about another state of things
    dropped = env.last("rollback")
    assert (dropped.result.value, dropped.from_version, dropped.actor) == ("refused", 1, "watch")
    assert dropped.details["judged"] == 2 and "judgement is dropped" in dropped.reason


def test_an_operators_promote_landing_before_the_watcher_acts_is_not_rolled_back(env: Env) -> None:
    env.promote_better()
    watcher, _ = env.watcher()
    assert env.ticks(watcher, 2) == [[], []]
    env.import_(Variant.BETTER)
    env.backends.turn_bad(MODEL, 2, nan_logits)
    real_rollback = watcher.__class__._roll_back

    def operator_first(self, action):  # type: ignore[no-untyped-def]
        env.orchestrator().promote(MODEL, 3)  # lands while the watcher waits for the lock
        real_rollback(self, action)

    env.monkeypatch.setattr(watcher.__class__, "_roll_back", operator_first)
    env.ticks(watcher, 1)
    assert env.store().served() == 3 and env.served_by_twin() == 3
    assert env.status(3) == "verified"
    assert [r.result.value for r in env.records() if r.action == "rollback"] == ["refused"]


def test_a_fallback_that_breaches_too_trips_the_loop_breaker(env: Env) -> None:
    env.promote_better()  # v2 serves, v1 verified
    env.import_(Variant.BETTER)
    env.orchestrator().promote(MODEL, 3)  # v3 serves, v2 and v1 verified
    watcher, _ = env.watcher()
    assert env.ticks(watcher, 2) == [[], []]
    env.backends.turn_bad(MODEL, 3, nan_logits)
    env.ticks(watcher, 1)
    assert env.store().served() == 2
    env.backends.turn_bad(MODEL, 2, nan_logits)  # the device, not the version: its fallback goes bad too
    env.ticks(watcher, 3)
    assert env.store().served() == 2 and env.served_by_twin() == 2  # stays: no second switch
    rollbacks = [(r.from_version, r.to_version) for r in env.records()
                 if r.action == "rollback" and r.result.value == "succeeded"]
    assert rollbacks == [(3, 2)]
    tripped = [r for r in env.records() if r.action == "anomaly" and "loop_breaker" in r.details["evidence"]]
    assert tripped and "v2, rolled back to" in tripped[0].details["evidence"]["loop_breaker"]
    assert env.status(2) == "verified"


def test_too_many_rollbacks_within_the_window_trip_the_loop_breaker(env: Env) -> None:
    env.promote_better()
    env.set_policy("watch", max_rollbacks=1, rollback_window_s=600)
    watcher, _ = env.watcher(watch={"max_rollbacks": 1, "rollback_window_s": 600})
    env.ticks(watcher, 2)
    env.backends.turn_bad(MODEL, 2, nan_logits)
    env.ticks(watcher, 1)
    assert env.store().served() == 1
    env.import_(Variant.BETTER)
    env.orchestrator().promote(MODEL, 3)
    env.backends.turn_bad(MODEL, 3, nan_logits)
    env.ticks(watcher, 3)
    assert env.store().served() == 3  # the breaker holds: no second automatic rollback inside 600 s
    tripped = [r for r in env.records() if r.action == "anomaly" and "loop_breaker" in r.details["evidence"]]
    assert "1 automatic rollbacks within 600 s" in tripped[0].details["evidence"]["loop_breaker"]


@pytest.mark.parametrize(("raw", "says"), [
    ({"max_rollbacks": 0}, "max_rollbacks must be >= 1"),
    ({"grace_s": float("nan")}, "grace_s must be a number, not NaN"),
    ({"rules": {"latency": {"after_grace": "false"}}}, "after_grace must be true or false"),
])
def test_watch_settings_that_make_no_sense_are_refused(raw: dict[str, object], says: str) -> None:
    with pytest.raises(PolicyError, match=says):
        parse_watch_policy(raw)


def test_a_nan_threshold_in_the_policy_file_names_the_file_and_the_field(env: Env) -> None:
    env.import_()
    env.set_policy("promotion", max_score_drop=float("nan"))
    with pytest.raises(RepositoryCorrupt, match=r"policy.yaml.*max_score_drop must be a number, not NaN"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1
