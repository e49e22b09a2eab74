"""The watcher's decisions on the twin: a version that turns bad is rolled back and quarantined, Triton down
is never a version's fault, alert-only rules and missing fallbacks never switch (mirrors
tests/integration/test_watch.py, one ``tick()`` at a time on a virtual clock)."""

from __future__ import annotations

import time

import pytest

from orchestrator.errors import PolicyViolation
from orchestrator.store.lock import model_lock
from orchestrator.store.metafile import Verification, VersionStatus
from orchestrator.store.modelconfig import to_json
from orchestrator.triton.metrics import scrape

from .conftest import MODEL, NOWHERE, Env, nan_logits


def watch_rollbacks(env: Env) -> list[tuple[int | None, int | None]]:
    return [(r.from_version, r.to_version) for r in env.records()
            if r.action == "rollback" and r.result == "succeeded" and r.actor == "watch"]


def alerts(env: Env) -> list[dict[str, object]]:
    return [r.details["evidence"] for r in env.records() if r.action == "anomaly" and r.result == "alert"]


def test_nan_outputs_are_rolled_back_and_the_version_quarantined(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    assert env.ticks(watcher, 3) == [[], [], []]
    assert registry.get_sample_value("orchestrator_served_version", {"model": MODEL}) == 2
    env.backends.turn_bad(MODEL, 2, nan_logits)
    assert env.ticks(watcher, 1) == [["output_sanity"]]
    assert env.store().served() == 1 and env.served_by_twin() == 1
    assert env.states() == {1: "READY", 2: "UNAVAILABLE"}
    assert env.status(2) == "quarantined" and "output_sanity" in (env.store().attestation(2).verification.reason or "")
    [record] = [r for r in env.records() if r.action == "rollback" and r.result == "succeeded"]
    assert (record.actor, record.from_version, record.to_version) == ("watch", 2, 1)
    assert record.details["quarantine"] is True
    evidence = record.details["evidence"]
    assert (evidence["rule"], evidence["served"], evidence["detail"]) == ("output_sanity", 2, "LOGITS has 40 NaN of 40")
    sample = registry.get_sample_value
    assert sample("orchestrator_rollbacks_total", {"model": MODEL, "rule": "output_sanity", "trigger": "watch"}) == 1
    assert sample("orchestrator_anomalies_total",
                  {"model": MODEL, "rule": "output_sanity", "severity": "rollback"}) == 1
    assert sample("orchestrator_detection_latency_seconds_count", {"model": MODEL, "rule": "output_sanity"}) == 1
    assert env.ticks(watcher, 5) == [[]] * 5  # v1 is healthy: nothing more happens
    assert sample("orchestrator_served_version", {"model": MODEL}) == 1
    assert alerts(env) == [] and watch_rollbacks(env) == [(2, 1)]
    with pytest.raises(PolicyViolation, match="quarantined"):
        env.orchestrator().promote(MODEL, 2)


def test_inference_errors_roll_back_after_the_probe_errors_debounce(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    assert env.ticks(watcher, 2) == [[], []]
    env.twin.configure(MODEL, 2, infer_error="stub process is not healthy")
    assert env.ticks(watcher, 1) == [[]]  # probe_errors: for_checks 2
    assert env.store().served() == 2
    assert env.ticks(watcher, 1) == [["probe_errors"]]
    assert watch_rollbacks(env) == [(2, 1)] and env.served_by_twin() == 1
    assert env.last("rollback").details["evidence"]["rule"] == "probe_errors"
    assert env.status(2) == "quarantined"
    labels = {"model": MODEL, "rule": "probe_errors", "trigger": "watch"}
    assert registry.get_sample_value("orchestrator_rollbacks_total", labels) == 1
    assert env.scrapes and set(env.scrapes) == {NOWHERE}  # a failed probe scrapes at once; no answer is no data


def test_a_hung_version_is_rolled_back(env: Env) -> None:
    env.promote_better()
    watcher, _ = env.watcher()
    env.twin.configure(MODEL, 2, hung=True)  # requests time out while the server stays live
    assert env.ticks(watcher, 2) == [[], ["probe_errors"]]
    assert watch_rollbacks(env) == [(2, 1)] and env.served_by_twin() == 1


def test_an_alert_only_rule_journals_an_alert_and_never_switches(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher({"rules": {"output_sanity": {"severity": "alert"},
                                               "divergence": {"severity": "off"}, "golden_score": {"severity": "off"}}})
    env.backends.turn_bad(MODEL, 2, nan_logits)
    assert env.ticks(watcher, 4) == [["output_sanity"], [], [], []]  # once per streak
    [record] = [r for r in env.records() if r.action == "anomaly"]
    assert (record.result, record.actor, record.from_version) == ("alert", "watch", 2)
    assert record.reason == "output_sanity: LOGITS has 40 NaN of 40"
    assert record.details["severity"] == "alert" and "rollback_refused" not in record.details["evidence"]
    assert env.store().served() == 2 and env.served_by_twin() == 2 and env.status(2) == "verified"
    assert watch_rollbacks(env) == []
    sample = registry.get_sample_value
    assert sample("orchestrator_anomalies_total", {"model": MODEL, "rule": "output_sanity", "severity": "alert"}) == 1
    # There from the start, never moved.
    assert sample("orchestrator_rollbacks_total", {"model": MODEL, "rule": "output_sanity", "trigger": "watch"}) == 0


def test_no_verified_fallback_alerts_once_and_leaves_serving_alone(env: Env) -> None:
    env.promote_better()
    env.store().set_verification(1, Verification(status=VersionStatus.ROLLED_BACK, reason="nothing to go back to"))
    watcher, _ = env.watcher()
    env.backends.turn_bad(MODEL, 2, nan_logits)
    raised = env.ticks(watcher, 10)
    assert raised[0] == ["output_sanity"] and raised[1:] == [[]] * 9
    [evidence] = alerts(env)
    assert evidence["rule"] == "output_sanity"
    assert evidence["rollback_refused"] == "classifier has no verified version other than v2 to roll back to"
    assert env.store().served() == 2 and env.served_by_twin() == 2
    assert watch_rollbacks(env) == [] and env.outcomes("rollback") == []


def test_triton_down_is_never_a_versions_fault(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    assert env.ticks(watcher, 3) == [[], [], []]
    env.twin.stop()
    assert env.ticks(watcher, 6) == [[]] * 6
    assert registry.get_sample_value("orchestrator_triton_up") == 0
    assert env.outcomes("rollback") == [] and alerts(env) == []
    assert env.store().served() == 2 and env.status(2) == "verified"
    env.twin.start()  # with --load-model: the on-disk policy
    assert env.ticks(watcher, 3) == [[], [], []]
    assert registry.get_sample_value("orchestrator_triton_up") == 1
    assert env.served_by_twin() == 2 and env.outcomes("rollback") == []


def test_a_healthy_version_is_judged_and_left_alone(env: Env) -> None:
    env.import_()
    watcher, registry = env.watcher()
    assert env.ticks(watcher, 2) == [[], []]
    env.orchestrator().promote(MODEL, 2)  # an operator's promote, seen on the next check
    assert env.ticks(watcher, 60) == [[]] * 60  # 2.4 passes of the golden set, the divergence window full
    sample = registry.get_sample_value
    assert sample("orchestrator_served_version", {"model": MODEL}) == 2
    assert sample("orchestrator_promotions_total", {"model": MODEL, "outcome": "succeeded"}) == 1
    assert sample("orchestrator_checks_total", {"model": MODEL}) == 62
    # the rules had data (an inconclusive rule would leave no value): the better version against v1
    assert sample("orchestrator_rule_value", {"model": MODEL, "rule": "golden_score", "value": "accuracy"}) == 0.97
    assert sample("orchestrator_rule_value", {"model": MODEL, "rule": "golden_score",
                                              "value": "baseline_accuracy"}) == 0.65
    assert sample("orchestrator_rule_value", {"model": MODEL, "rule": "divergence", "value": "top1_agreement"}) \
        is not None
    assert env.outcomes("rollback") == [] and alerts(env) == []


def test_a_busy_model_makes_the_watcher_retry_on_the_next_check(env: Env) -> None:
    env.promote_better()
    watcher, _ = env.watcher(lock_timeout_s=0.05)
    env.backends.turn_bad(MODEL, 2, nan_logits)
    with model_lock(env.store().state, MODEL, timeout_s=1):  # an operator's command holds the model
        assert env.ticks(watcher, 1) == [["output_sanity"]]
    assert env.store().served() == 2 and watch_rollbacks(env) == []
    assert env.ticks(watcher, 1) == [["output_sanity"]]  # judged again, rolled back now
    assert watch_rollbacks(env) == [(2, 1)]


def test_one_bad_check_breaching_two_rules_rolls_back_once(env: Env) -> None:
    env.promote_better()
    env.import_()
    env.orchestrator().promote(MODEL, 3)  # v2 resident fallback, v1 verified
    watcher, _ = env.watcher()
    assert env.ticks(watcher, 10) == [[]] * 10
    env.backends.turn_bad(MODEL, 3, nan_logits)
    watcher.tick()
    assert watch_rollbacks(env) == [(3, 2)]
    assert env.store().served() == 2 and env.status(2) == "verified" and alerts(env) == []


def test_scraping_a_metrics_url_nothing_listens_on_answers_none_within_its_timeout() -> None:
    started = time.monotonic()
    assert scrape(NOWHERE, timeout_s=2.0) is None
    assert time.monotonic() - started < 5.0  # never hangs the watcher past its own deadline


def test_a_served_version_triton_has_not_loaded_yet_is_no_breach_while_a_command_switches(env: Env) -> None:
    """A promote writes the config before Triton loads it (and 2.51 lists no LOADING meanwhile): the watcher,
    seeing the new version on disk and not READY in Triton, waits for the command instead of rolling back."""
    env.promote_better()
    assert env.import_() == 3
    store = env.store()
    store.set_verification(3, Verification(status=VersionStatus.VERIFIED, verified_by="pytest"))
    watcher, _ = env.watcher({"metrics_interval_s": 0.05})  # Triton's states read every check
    assert env.ticks(watcher, 2) == [[], []]
    with model_lock(store.state, MODEL, timeout_s=1):  # the promote between its config write and Triton's load
        store.write_resident(store.snapshot(), (2, 3))
        assert env.ticks(watcher, 8) == [[]] * 8
        assert 3 not in env.ready() and watcher.served == 3
        env.twin.load(MODEL, to_json(store.snapshot().config))
    assert env.ticks(watcher, 8) == [[]] * 8
    assert watch_rollbacks(env) == [] and env.served_by_twin() == 3 and env.status(3) == "verified"


def test_a_served_version_still_not_loaded_once_no_command_holds_the_model_is_rolled_back(env: Env) -> None:
    env.promote_better()
    assert env.import_() == 3
    store = env.store()
    store.set_verification(3, Verification(status=VersionStatus.VERIFIED, verified_by="pytest"))
    watcher, _ = env.watcher({"metrics_interval_s": 0.05})  # Triton's states read every check
    with model_lock(store.state, MODEL, timeout_s=1):
        store.write_resident(store.snapshot(), (2, 3))
        assert env.ticks(watcher, 8) == [[]] * 8
    # the command went away without loading it (killed): the disk names a version Triton does not serve
    raised = [rule for rules in env.ticks(watcher, 8) for rule in rules]
    assert raised == ["health"]
    assert watch_rollbacks(env) == [(3, 2)] and env.served_by_twin() == 2
    assert env.last("rollback").details["evidence"]["detail"] == "served version is not READY"
