"""Drift of a detector's answers, pure: frame rows, the window's judgement, the rule's words and duration.

The numbers are worked by hand. The baseline is three windows of 50 frames with 2 classes (rows:
detections per frame, class 0 per frame, class 1 per frame, other classes per frame):

    window 1  [1.5, 0.90, 0.45, 0.15]
    window 2  [2.0, 1.20, 0.60, 0.20]
    window 3  [2.5, 1.50, 0.75, 0.25]

Detections per frame: mean 2.0, sigma sqrt(((-0.5)^2 + 0 + 0.5^2) / 2) = 0.5, above the floor
sqrt(2.0 / 50) = 0.2: a window is inside mean +/- 3 sigma = [0.5, 3.5]. Class shares of the mean
rates [1.2, 0.6, 0.2]: [0.6, 0.3, 0.1].
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.core.detection import Boxes
from orchestrator.core.detection_drift import (
    class_shares,
    count_floor,
    detections_of,
    frame_rows,
    judge,
    total_variation,
)
from orchestrator.core.drift import Baseline, DriftWindow, WindowAccumulator
from orchestrator.core.policy import (
    DETECTIONS,
    DETECTIONS_SUSTAIN_S,
    Drift,
    Severity,
    WatchPolicy,
    baseline_key,
    parse_watch_policy,
)
from orchestrator.core.rules import Observation, Outcome, assess, step

KEY = "detections:BOXES:50:0.5:2"


def _baseline(*rows: list[float]) -> Baseline:
    baseline = Baseline(KEY)
    for row in rows:
        baseline = baseline.add(np.array(row))
    return baseline


BASELINE = _baseline([1.5, 0.90, 0.45, 0.15], [2.0, 1.20, 0.60, 0.20], [2.5, 1.50, 0.75, 0.25])


def _frame(classes: list[int], scores: list[float]) -> Boxes:
    return Boxes(np.tile([0.0, 0.0, 4.0, 4.0], (len(classes), 1)), np.array(classes, np.int64),
                 np.array(scores, np.float64))


def test_a_frames_row_counts_boxes_above_the_threshold_per_class_and_the_rest_as_other() -> None:
    frames = [_frame([0, 1, 1, 5], [0.9, 0.6, 0.4, 0.7]),  # 0.4 is not a detection; class 5 is "other"
              _frame([0, 1], [math.nan, 0.5]),  # a NaN score never counts, nor one equal to the threshold
              Boxes.empty()]
    assert frame_rows(frames, classes=2, threshold=0.5).tolist() == [[3, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="classes must be >= 1"):
        frame_rows(frames, classes=0, threshold=0.5)


def test_a_traced_answer_decodes_with_or_without_a_batch_axis() -> None:
    boxes = np.zeros((2, 4), np.float32)
    boxes[0] = [1, 1, 5, 5]
    outputs = {"BOXES": boxes, "SCORES": np.array([0.9, 0.0], np.float32), "CLASSES": np.array([3, 0], np.int32),
               "COUNT": np.array([1], np.int32)}
    [frame] = detections_of(outputs)  # a model without batching: (K, 4), COUNT (1,)
    assert frame.classes.tolist() == [3]
    batched = detections_of({name: value[None] for name, value in outputs.items()})
    assert len(batched) == 1 and batched[0] == frame
    with pytest.raises(ValueError, match="COUNT"):
        detections_of({**outputs, "COUNT": np.array([3], np.int32)})  # more rows than K


def test_windows_of_frame_rows_average_each_column() -> None:
    windows = WindowAccumulator(DETECTIONS, size=2, row_size=0)
    windows.add(np.array([[3.0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]))
    assert windows.pop().tolist() == [1.5, 0.5, 0.5, 0.5]  # type: ignore[union-attr]
    assert windows.pop() is None and windows.pending == 1


def test_shares_distance_and_floor_by_hand() -> None:
    assert class_shares(np.array(BASELINE.mean)) == pytest.approx([0.6, 0.3, 0.1])
    assert class_shares(np.array([0.0, 0.0, 0.0, 0.0])) is None
    assert total_variation(np.array([0.3, 0.6, 0.1]), np.array([0.6, 0.3, 0.1])) == pytest.approx(0.3)
    assert total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert count_floor(2.0, 50) == pytest.approx(0.2)
    assert count_floor(0.0, 50) == pytest.approx(0.02)  # at least one detection in the window


def test_detections_per_frame_against_mean_and_three_sigma() -> None:
    assert BASELINE.mean[0] == pytest.approx(2.0) and BASELINE.sigma()[0] == pytest.approx(0.5)
    inside = judge(np.array([3.4, 2.04, 1.02, 0.34]), BASELINE, window=50)
    assert (inside.per_frame, inside.mean, inside.sigma) == pytest.approx((3.4, 2.0, 0.5))
    assert inside.z == pytest.approx(2.8) and inside.shift == pytest.approx(0.0)
    assert judge(np.array([3.6, 2.16, 1.08, 0.36]), BASELINE, window=50).z == pytest.approx(3.2)
    empty = judge(np.zeros(4), BASELINE, window=50)
    assert empty.z == pytest.approx(4.0) and empty.shift is None and empty.boxes == 0  # no boxes: no shares


def test_class_shares_moved_by_total_variation() -> None:
    swapped = judge(np.array([2.0, 0.6, 1.2, 0.2]), BASELINE, window=50)
    assert swapped.z == 0 and swapped.shift == pytest.approx(0.5 * (0.3 + 0.3))
    nearby = judge(np.array([2.0, 1.0, 0.8, 0.2]), BASELINE, window=50)
    assert nearby.shift == pytest.approx(0.5 * (0.1 + 0.1))


def test_a_baseline_of_identical_windows_is_floored_at_the_poisson_error() -> None:
    flat = _baseline([2.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 0.0])
    assert judge(np.array([2.5, 1.25, 1.25, 0.0]), flat, window=50).z == pytest.approx(2.5)  # 0.5 / 0.2
    assert judge(np.array([2.7, 1.35, 1.35, 0.0]), flat, window=50).z == pytest.approx(3.5)
    nothing = _baseline([0.0] * 4, [0.0] * 4)
    assert judge(np.array([0.06, 0.06, 0, 0]), nothing, window=50).z == pytest.approx(3.0)  # 3 boxes in 50 frames
    assert judge(np.array([0.08, 0.08, 0, 0]), nothing, window=50).shift is None  # the baseline had no boxes


def test_a_window_not_shaped_like_the_baseline_is_refused_and_nan_is_infinitely_far() -> None:
    with pytest.raises(ValueError, match="a window of 3 values for a detections baseline of 4"):
        judge(np.zeros(3), BASELINE, window=50)
    assert judge(np.array([math.nan, 0, 0, 0]), BASELINE, window=50).z == math.inf


# --- the rule ------------------------------------------------------------------------------

def _window(value: list[float], own: bool = False) -> Observation:
    window = DriftWindow(DETECTIONS, np.array(value), 50, BASELINE, reference=2 if own else 1, own=own,
                         model="detector", served=2, route="detection")
    return Observation(time=0.0, live=True, drift=window)


def test_the_finding_names_the_detector_its_version_the_route_and_both_measures() -> None:
    rule = Drift(statistic=DETECTIONS, classes=2)
    assert assess("drift", rule, _window([3.4, 2.04, 1.02, 0.34])).outcome is Outcome.OK
    empty = assess("drift", rule, _window([0.0, 0.0, 0.0, 0.0]))
    assert empty.outcome is Outcome.BREACH and not empty.alert_only
    assert empty.detail == ("detector v2 through detection: 0.00 detections per frame over 50 frames, 4.0 sigma "
                            "from v1's baseline 2.00 +/- 0.5 (max 3)")
    assert empty.values["value"] == 0 and empty.values["z"] == pytest.approx(4.0) and "class_shift" not in empty.values
    swapped = assess("drift", rule, _window([2.0, 0.6, 1.2, 0.2]))
    assert swapped.outcome is Outcome.BREACH and swapped.values["class_shift"] == pytest.approx(0.3)
    assert swapped.detail == ("detector v2 through detection: class shares of 100 boxes moved 0.30 (total "
                              "variation) from v1's baseline (max 0.2)")
    assert assess("drift", Drift(statistic=DETECTIONS, max_class_shift=0.35), _window([2.0, 0.6, 1.2, 0.2])
                  ).outcome is Outcome.OK
    own = assess("drift", rule, _window([0.0, 0.0, 0.0, 0.0], own=True))
    assert own.alert_only and "its own baseline" in own.detail and own.detail.endswith("the inputs drifted")


def test_detections_drift_must_last_two_minutes_by_default() -> None:
    rule = Drift(statistic=DETECTIONS, for_checks=2)
    assert rule.sustain_s == DETECTIONS_SUSTAIN_S == 120.0
    assert Drift().sustain_s == 0 and Drift(statistic=DETECTIONS, for_s=30).sustain_s == 30
    policy = WatchPolicy(rules={"drift": rule})
    breach = assess("drift", rule, _window([0.0, 0.0, 0.0, 0.0]))
    streaks, anomalies = step({}, [breach], policy, now=1000.0, in_grace=False)
    streaks, anomalies = step(streaks, [breach], policy, now=1060.0, in_grace=False)
    assert anomalies == []  # two windows, but only a minute outside
    streaks, anomalies = step(streaks, [breach], policy, now=1119.0, in_grace=False)
    assert anomalies == []
    streaks, anomalies = step(streaks, [breach], policy, now=1120.0, in_grace=False)
    assert [(a.rule, a.severity, a.first_breach, a.detection_latency_s) for a in anomalies] == \
        [("drift", Severity.ALERT, 1000.0, 120.0)]
    ok = assess("drift", rule, _window([2.0, 1.2, 0.6, 0.2]))
    streaks, _ = step(streaks, [ok], policy, now=1130.0, in_grace=False)
    _, anomalies = step(streaks, [breach], policy, now=1140.0, in_grace=False)
    assert anomalies == []  # back inside: the two minutes start again


def test_the_detection_settings_come_from_the_watch_policy() -> None:
    rule = parse_watch_policy({"rules": {"drift": {"statistic": "detections", "for_s": 45, "classes": 80,
                                                   "max_class_shift": 0.3, "samples_per_s": 2}}}).rules["drift"]
    assert isinstance(rule, Drift)
    assert (rule.statistic, rule.sustain_s, rule.classes, rule.max_class_shift, rule.severity) == \
        ("detections", 45.0, 80, 0.3, Severity.ALERT)
    assert rule.baseline_key(["BOXES", "SCORES"]) == "detections:BOXES:50:0.5:80"
    assert baseline_key("detections", "BOXES", 20, 0.25, 4) == "detections:BOXES:20:0.25:4"
    unset = parse_watch_policy({"rules": {"drift": {"statistic": "detections", "for_s": None}}}).rules["drift"]
    assert unset.sustain_s == 120.0


@pytest.mark.parametrize(("settings", "message"), [
    ({"for_s": -1}, "for_s must be a number of seconds >= 0"),
    ({"classes": -2}, "classes must be an integer >= 0"),
    ({"max_class_shift": 0}, r"max_class_shift must be within \(0, 1\]"),
    ({"max_class_shift": 1.5}, r"max_class_shift must be within \(0, 1\]"),
])
def test_bad_detection_settings_are_refused_with_the_reason(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_watch_policy({"rules": {"drift": {"statistic": "detections", **settings}}})
