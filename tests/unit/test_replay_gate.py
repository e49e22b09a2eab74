"""The replay gate (``core/replay_gate.py``) on worked cases: what passes, fails, or is only inconclusive."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.policy import ReplayPolicy
from orchestrator.core.replay_gate import compare, is_golden, replay_gate, unseen, with_replay
from orchestrator.core.verdict import Outcome, Verdict

CLASSIFIER = ["LOGITS"]
DETECTOR = ["BOXES", "SCORES", "CLASSES", "COUNT"]
POLICY = ReplayPolicy(enabled=True, min_samples=10, limit=100, min_top1_agreement=0.95, min_box_agreement=0.8,
                      max_count_diff=0.5)  # the mechanics, at thresholds tighter than the defaults


def _logits(top: int, rows: int = 1) -> dict[str, np.ndarray]:
    out = np.zeros((rows, 10), np.float32)
    out[:, top] = 5.0
    return {"LOGITS": out}


def _detections(boxes: list[tuple[float, float, float, float, int]], k: int = 8) -> dict[str, np.ndarray]:
    out = {"BOXES": np.zeros((1, k, 4), np.float32), "SCORES": np.zeros((1, k), np.float32),
           "CLASSES": np.zeros((1, k), np.float32), "COUNT": np.array([[len(boxes)]], np.int32)}
    for i, (x1, y1, x2, y2, cls) in enumerate(boxes):
        out["BOXES"][0, i] = (x1, y1, x2, y2)
        out["SCORES"][0, i] = 0.9
        out["CLASSES"][0, i] = cls
    return out


TWO = [(0, 0, 10, 10, 1), (20, 20, 30, 30, 2)]


def test_a_classifier_agreeing_on_every_recorded_input_passes() -> None:
    pairs = [(_logits(i % 10), _logits(i % 10)) for i in range(20)]
    verdict = replay_gate(compare(pairs, CLASSIFIER), POLICY)
    assert verdict.outcome is Outcome.PASSED
    assert verdict.metrics == {"replay_samples": 20.0, "replay_skipped": 0.0, "replay_top1_agreement": 1.0}


def test_a_classifier_that_calls_half_the_inputs_class_0_fails_on_top1() -> None:
    pairs = [(_logits(0 if i % 2 else 3), _logits(3)) for i in range(20)]
    verdict = replay_gate(compare(pairs, CLASSIFIER), POLICY)
    assert verdict.outcome is Outcome.FAILED and verdict.metric == "replay_top1_agreement"
    assert verdict.metrics["replay_top1_agreement"] == 0.5
    assert "top-1 agreement with the served version 0.500 is below replay.min_top1_agreement 0.95" in verdict.reason


def test_top1_counts_rows_of_a_batched_record_and_a_nan_row_never_agrees() -> None:
    nan = _logits(3, rows=4)
    nan["LOGITS"][1] = np.nan
    pairs = [(nan, _logits(3, rows=4))] * 10
    observed = compare(pairs, CLASSIFIER)
    assert observed.samples == 10 and observed.top1_agreement == 0.75


def test_fewer_recorded_inputs_than_min_samples_is_inconclusive_and_only_require_makes_it_a_fail() -> None:
    pairs = [(_logits(0), _logits(3))] * 4  # they disagree, but four inputs say little
    verdict = replay_gate(compare(pairs, CLASSIFIER, skipped=2), POLICY)
    assert verdict.outcome is Outcome.INCONCLUSIVE and not verdict.passed
    assert verdict.reason == ("replay inconclusive: 4 recorded production inputs compared, replay.min_samples is 10 "
                              "(2 recorded inputs skipped)")
    required = replay_gate(compare(pairs, CLASSIFIER), ReplayPolicy(min_samples=10, require=True))
    assert required.outcome is Outcome.FAILED and "replay.require refuses the promote" in required.reason
    empty = replay_gate(compare([], CLASSIFIER), POLICY)
    assert empty.outcome is Outcome.INCONCLUSIVE and empty.metrics["replay_samples"] == 0


def test_a_candidate_answering_another_shape_fails() -> None:
    verdict = replay_gate(compare([(_logits(0, rows=2), _logits(0))] * 20, CLASSIFIER), POLICY)
    assert verdict.outcome is Outcome.FAILED
    assert "LOGITS is (2, 10), the served version answers (1, 10)" in verdict.reason


def test_outputs_that_are_neither_scores_nor_detections_are_inconclusive() -> None:
    pairs = [({"VALUE": np.ones((1, 1))}, {"VALUE": np.ones((1, 1))})] * 20
    verdict = replay_gate(compare(pairs, ["VALUE"]), POLICY)
    assert verdict.outcome is Outcome.INCONCLUSIVE and "neither class scores nor detections" in verdict.reason


def test_a_detector_finding_the_same_boxes_passes() -> None:
    pairs = [(_detections(TWO), _detections(TWO))] * 12
    verdict = replay_gate(compare(pairs, DETECTOR), POLICY)
    assert verdict.outcome is Outcome.PASSED
    assert verdict.metrics == {"replay_samples": 12.0, "replay_skipped": 0.0, "replay_box_agreement": 1.0,
                               "replay_count_diff": 0.0}


def test_a_detector_missing_half_the_boxes_fails_on_box_agreement() -> None:
    pairs = [(_detections(TWO[:1]), _detections(TWO))] * 12
    verdict = replay_gate(compare(pairs, DETECTOR), POLICY)
    assert verdict.outcome is Outcome.FAILED and verdict.metric == "replay_box_agreement"
    assert verdict.metrics["replay_box_agreement"] == 0.5 and verdict.metrics["replay_count_diff"] == 1.0


def test_a_detector_adding_boxes_fails_on_the_count_when_the_agreement_threshold_lets_it_pass() -> None:
    extra = [*TWO, (40, 40, 50, 50, 3), (50, 0, 60, 10, 0)]
    pairs = [(_detections(extra), _detections(TWO))] * 12
    verdict = replay_gate(compare(pairs, DETECTOR), ReplayPolicy(min_samples=10, min_box_agreement=0.5))
    assert verdict.outcome is Outcome.FAILED and verdict.metric == "replay_count_diff"
    assert "differ from the served version's by 2.00 on average, above replay.max_count_diff 1" in verdict.reason


def test_a_detector_whose_outputs_do_not_decode_fails_and_a_served_answer_that_does_not_is_skipped() -> None:
    broken = _detections(TWO)
    broken["COUNT"] = np.array([[99]], np.int32)
    verdict = replay_gate(compare([(broken, _detections(TWO))] * 12, DETECTOR), POLICY)
    assert verdict.outcome is Outcome.FAILED and "outputs are not detections: COUNT of frame 0 is 99" in verdict.reason
    observed = compare([(_detections(TWO), broken)] * 3 + [(_detections(TWO), _detections(TWO))] * 10, DETECTOR)
    assert observed.skipped == 3 and observed.samples == 10 and observed.box_agreement == 1.0


def test_golden_inputs_and_repeats_are_not_production_inputs() -> None:
    rng = np.random.default_rng(0)
    golden = {"IMAGE": rng.normal(0, 1, (6, 3, 4, 4)).astype(np.float32)}
    traced = golden["IMAGE"][1:3] * np.float32(1 + 3e-6)  # six significant digits, as a trace writes them
    real = rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)
    mixed = np.concatenate([golden["IMAGE"][:1], real])
    records = [{"IMAGE": traced}, {"IMAGE": real}, {"IMAGE": real.copy()}, {"IMAGE": mixed},
               {"IMAGE": golden["IMAGE"][4]}]  # the last: an unbatched model's record
    kept = unseen(records, golden)
    assert (kept.golden, kept.repeated) == (2, 1)
    assert [r["IMAGE"].shape for r in kept.records] == [(1, 3, 4, 4), (2, 3, 4, 4)]
    assert not is_golden({"IMAGE": real * 0 + golden["IMAGE"][0] + 1e-3}, golden)
    assert not is_golden({"OTHER": real}, golden) and unseen(records, None).golden == 0


def test_uint8_frames_match_golden_ones_exactly_only() -> None:
    golden = {"IMAGE": np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)}
    assert is_golden({"IMAGE": golden["IMAGE"][1:]}, golden)
    nudged = golden["IMAGE"][1:].copy()
    nudged[0, 7, 7, 2] += 1
    assert not is_golden({"IMAGE": nudged}, golden)


@pytest.mark.parametrize(("replay", "outcome", "reason"), [
    (Verdict(Outcome.PASSED, "replay ok", metrics={"replay_samples": 60.0}), Outcome.PASSED, "golden ok"),
    (Verdict(Outcome.INCONCLUSIVE, "too few", metrics={"replay_samples": 3.0}), Outcome.PASSED, "golden ok"),
    (Verdict(Outcome.FAILED, "replay disagrees", metrics={"replay_samples": 60.0}), Outcome.FAILED,
     "replay disagrees"),
])
def test_the_replay_joins_the_golden_verdict(replay: Verdict, outcome: Outcome, reason: str) -> None:
    golden = Verdict(Outcome.PASSED, "golden ok", metrics={"accuracy": 0.9})
    joined = with_replay(golden, replay)
    assert (joined.outcome, joined.reason) == (outcome, reason)
    assert joined.metrics == {"accuracy": 0.9, **replay.metrics}
