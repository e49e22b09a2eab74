"""Watch rules: the policy file, the drift judgement and debounce, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.drift import Baseline, DriftWindow
from orchestrator.core.policy import Drift, Severity, WatchPolicy, parse_watch_policy
from orchestrator.core.rules import Finding, Observation, Outcome, assess, step


def _baseline(shares: list[float], windows: int = 20) -> Baseline:
    baseline = Baseline("class_histogram:LOGITS:50")
    rng = np.random.default_rng(1)
    for _ in range(windows):
        counts = rng.multinomial(50, shares)
        baseline = baseline.add(counts / 50)
    return baseline


UNIFORM = [0.25, 0.25, 0.25, 0.25]


def _obs(window: DriftWindow | None, pending: str = "") -> Observation:
    return Observation(time=0.0, live=True, drift=window, drift_pending=pending)


def test_drift_defaults_and_settings_from_yaml() -> None:
    assert parse_watch_policy(None).rules["drift"] == Drift()
    assert Drift().severity is Severity.ALERT and Drift().for_checks == 3 and Drift().sigmas == 3.0
    assert not Drift().sampling  # opt-in: tracing production is a risk on Triton 2.51 (see rules.py)
    policy = parse_watch_policy({"rules": {"drift": {"severity": "rollback", "statistic": "detection_count",
                                                     "threshold": 0.3, "window": 30, "samples_per_s": 5}}})
    rule = policy.rules["drift"]
    assert isinstance(rule, Drift)
    assert (rule.severity, rule.statistic, rule.threshold, rule.window, rule.samples_per_s) == \
        (Severity.ROLLBACK, "detection_count", 0.3, 30, 5.0)
    assert rule.sampling
    assert not Drift(samples_per_s=0).sampling and not Drift(severity=Severity.OFF).sampling


@pytest.mark.parametrize(("settings", "message"), [
    ({"statistic": "median"}, "drift statistic must be one of class_histogram, detection_count, mean"),
    ({"window": 1}, "window >= 2"),
    ({"sigmas": 0}, "sigmas > 0"),
    ({"samples_per_s": -1}, "samples_per_s >= 0"),
    ({"windw": 20}, "rule drift: unknown setting\\(s\\) windw"),
])
def test_bad_drift_settings_are_refused_with_the_reason(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_watch_policy({"rules": {"drift": settings}})


def test_drift_is_inconclusive_until_a_window_closes_and_a_baseline_exists() -> None:
    rule = Drift()
    pending = assess("drift", rule, _obs(None, "12 of 50 production outputs"))
    assert pending.outcome is Outcome.INCONCLUSIVE and pending.detail == "12 of 50 production outputs"
    learning = DriftWindow("class_histogram", np.array(UNIFORM), 50, None, why="recording v2's baseline: 3 of 20")
    finding = assess("drift", rule, _obs(learning))
    assert finding.outcome is Outcome.INCONCLUSIVE and "3 of 20" in finding.detail


def test_a_window_like_the_baseline_passes_and_a_shifted_one_breaches() -> None:
    rule = Drift()
    baseline = _baseline(UNIFORM)
    same = DriftWindow("class_histogram", np.array([0.28, 0.22, 0.26, 0.24]), 50, baseline, reference=1)
    assert assess("drift", rule, _obs(same)).outcome is Outcome.OK
    shifted = DriftWindow("class_histogram", np.array([0.7, 0.1, 0.1, 0.1]), 50, baseline, reference=1)
    finding = assess("drift", rule, _obs(shifted))
    assert finding.outcome is Outcome.BREACH and not finding.alert_only
    assert finding.detail.startswith("class 0 share 0.7 over 50 production outputs")
    assert "sigma from v1's baseline 0.2" in finding.detail
    assert finding.values["z"] > 3 and finding.values["value"] == 0.7


def test_drift_from_the_versions_own_baseline_is_input_drift_and_only_alerts() -> None:
    rule = Drift(severity=Severity.ROLLBACK, for_checks=2)
    policy = WatchPolicy(rules={"drift": rule})
    shifted = DriftWindow("class_histogram", np.array([0.1, 0.1, 0.1, 0.7]), 50, _baseline(UNIFORM), reference=2,
                          own=True)
    finding = assess("drift", rule, _obs(shifted))
    assert finding.alert_only and "the inputs drifted" in finding.detail and "its own baseline" in finding.detail
    streaks, first = step({}, [finding], policy, now=1.0, in_grace=False)
    assert first == []  # debounced: one window is not sustained drift
    streaks, second = step(streaks, [Finding("drift", Outcome.INCONCLUSIVE, "filling")], policy, 2.0, False)
    assert second == []  # between windows the streak neither grows nor resets
    _, third = step(streaks, [finding], policy, 3.0, False)
    assert [a.severity for a in third] == [Severity.ALERT] and third[0].first_breach == 1.0


def test_against_another_versions_baseline_the_rules_severity_applies() -> None:
    rule = Drift(severity=Severity.ROLLBACK, for_checks=1)
    shifted = DriftWindow("class_histogram", np.array([0.1, 0.1, 0.1, 0.7]), 50, _baseline(UNIFORM), reference=1)
    _, anomalies = step({}, [assess("drift", rule, _obs(shifted))], WatchPolicy(rules={"drift": rule}), 1.0, False)
    assert [a.severity for a in anomalies] == [Severity.ROLLBACK]


def test_detection_count_detail_names_the_statistic() -> None:
    baseline = Baseline("detection_count:SCORES:50:0.5")
    for value in (3.0, 3.2, 2.9, 3.1, 3.0):
        baseline = baseline.add(np.array([value]))
    window = DriftWindow("detection_count", np.array([0.4]), 50, baseline, reference=1)
    finding = assess("drift", Drift(statistic="detection_count"), _obs(window))
    assert finding.outcome is Outcome.BREACH and finding.detail.startswith("detection count 0.4 over 50")
