"""The watcher's alerting series on the twin: there from the start at the journal's counts, moved by
every rollback (the watcher's and the operator's) and promote outcome, and "blocked" while a bad
version cannot be rolled back."""

from __future__ import annotations

from datetime import datetime, timezone

from orchestrator.core.journal import Record, Result
from orchestrator.store.metafile import Verification, VersionStatus

from .conftest import MODEL, Env, nan_logits


def test_every_series_an_alert_reads_is_there_at_start_with_the_journals_counts(env: Env) -> None:
    env.promote_better()
    journal = env.store().journal
    journal.append(Record("rollback", Result.SUCCEEDED, "a", actor="ops", from_version=2, to_version=1,
                          time="2026-11-30T10:00:00.000+00:00"))
    journal.append(Record("promote", Result.REFUSED, "b", actor="ops", to_version=3))
    _, registry = env.watcher()
    sample = registry.get_sample_value
    assert sample("orchestrator_rollbacks_total", {"model": MODEL, "rule": "operator", "trigger": "operator"}) == 1
    for rule in ("output_sanity", "latency", "health", "drift"):
        assert sample("orchestrator_rollbacks_total", {"model": MODEL, "rule": rule, "trigger": "watch"}) == 0
    assert sample("orchestrator_anomalies_total", {"model": MODEL, "rule": "latency", "severity": "rollback"}) == 0
    assert sample("orchestrator_anomalies_total", {"model": MODEL, "rule": "drift", "severity": "alert"}) == 0
    assert sample("orchestrator_promotions_total", {"model": MODEL, "outcome": "succeeded"}) == 1
    assert sample("orchestrator_promotions_total", {"model": MODEL, "outcome": "refused"}) == 1
    assert sample("orchestrator_promotions_total", {"model": MODEL, "outcome": "failed"}) == 0
    assert sample("orchestrator_quarantines_total", {"model": MODEL}) == 0
    at = datetime(2026, 11, 30, 10, tzinfo=timezone.utc).timestamp()
    assert sample("orchestrator_last_event_timestamp_seconds", {"model": MODEL, "event": "rollback"}) == at
    assert sample("orchestrator_last_event_timestamp_seconds", {"model": MODEL, "event": "quarantine"}) == 0
    for reason in ("no_fallback", "loop_breaker"):
        assert sample("orchestrator_rollback_blocked", {"model": MODEL, "reason": reason}) == 0


def test_a_restarted_watcher_counts_from_the_journal_neither_forgetting_nor_repeating(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    env.backends.turn_bad(MODEL, 2, nan_logits)
    assert env.ticks(watcher, 1) == [["output_sanity"]]
    labels = {"model": MODEL, "rule": "output_sanity", "trigger": "watch"}
    assert registry.get_sample_value("orchestrator_rollbacks_total", labels) == 1
    assert registry.get_sample_value("orchestrator_quarantines_total", {"model": MODEL}) == 1
    env.ticks(watcher, 3)  # the follower reads the watcher's own records: not counted twice
    assert registry.get_sample_value("orchestrator_rollbacks_total", labels) == 1
    _, restarted = env.watcher()  # a new daemon: a new registry, the same journal
    assert restarted.get_sample_value("orchestrator_rollbacks_total", labels) == 1
    assert restarted.get_sample_value("orchestrator_quarantines_total", {"model": MODEL}) == 1


def test_an_operators_rollback_and_promote_while_watching_are_counted(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    env.ticks(watcher, 2)
    env.orchestrator().rollback(MODEL)
    env.ticks(watcher, 2)
    sample = registry.get_sample_value
    assert sample("orchestrator_rollbacks_total", {"model": MODEL, "rule": "operator", "trigger": "operator"}) == 1
    assert sample("orchestrator_last_event_timestamp_seconds", {"model": MODEL, "event": "rollback"}) > 0
    assert sample("orchestrator_quarantines_total", {"model": MODEL}) == 0  # by hand: rolled back, not quarantined


def test_a_bad_version_with_no_fallback_is_blocked_until_a_switch(env: Env) -> None:
    env.promote_better()
    env.store().set_verification(1, Verification(status=VersionStatus.ROLLED_BACK, reason="nothing to go back to"))
    watcher, registry = env.watcher()
    env.backends.turn_bad(MODEL, 2, nan_logits)
    env.ticks(watcher, 3)
    blocked = {"model": MODEL, "reason": "no_fallback"}
    assert registry.get_sample_value("orchestrator_rollback_blocked", blocked) == 1
    assert env.served_by_twin() == 2
    env.orchestrator().rollback(MODEL, to=1, force=True)  # the operator acts
    env.ticks(watcher, 1)
    assert registry.get_sample_value("orchestrator_rollback_blocked", blocked) == 0


def test_a_paused_model_is_alerted_not_rolled_back_until_resumed(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    env.ticks(watcher, 2)
    orch = env.orchestrator()
    orch.pause(MODEL, "camera recalibration")
    env.backends.turn_bad(MODEL, 2, nan_logits)
    env.ticks(watcher, 4)
    assert env.served_by_twin() == 2 and env.outcomes("rollback") == []  # held back: v2 keeps serving
    [alert] = [r for r in env.records() if r.action == "anomaly"]
    assert alert.details["evidence"]["paused"]["reason"] == "camera recalibration"
    sample = registry.get_sample_value
    assert sample("orchestrator_automatic_rollback_paused", {"model": MODEL}) == 1
    assert sample("orchestrator_rollback_blocked", {"model": MODEL, "reason": "paused"}) == 1
    assert orch.resume(MODEL) is not None
    env.ticks(watcher, 3)
    assert env.served_by_twin() == 1 and env.status(2) == "quarantined"  # acted on once resumed
    assert sample("orchestrator_automatic_rollback_paused", {"model": MODEL}) == 0
    assert sample("orchestrator_rollback_blocked", {"model": MODEL, "reason": "paused"}) == 0
    assert [r.action for r in env.records() if r.action in ("pause", "resume")] == ["pause", "resume"]


def test_an_unreadable_pause_file_still_pauses_and_resume_removes_it(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    (env.store().state / "paused.json").write_text("{not json")
    env.backends.turn_bad(MODEL, 2, nan_logits)
    env.ticks(watcher, 3)
    assert env.served_by_twin() == 2
    assert registry.get_sample_value("orchestrator_automatic_rollback_paused", {"model": MODEL}) == 1
    assert env.orchestrator().resume(MODEL) is not None
    assert not (env.store().state / "paused.json").exists()
