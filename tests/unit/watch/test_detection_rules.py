"""The watch rules and the promote gate on a detector: IoU-matched divergence, mAP drops, padded zeros."""

from __future__ import annotations

import numpy as np

from orchestrator.core.checks import compare_maps, sanity
from orchestrator.core.detection import Boxes, mean_average_precision
from orchestrator.core.policy import Divergence, GoldenScore, OutputSanity, PromotionPolicy
from orchestrator.core.rules import Observation, Outcome, assess


def frame(*boxes: tuple[float, float, float, float, int], score: float = 0.9) -> Boxes:
    if not boxes:
        return Boxes.empty()
    return Boxes(np.array([b[:4] for b in boxes], np.float32), np.array([b[4] for b in boxes]),
                 np.full(len(boxes), score, np.float32))


BASE = tuple(frame((0, 0, 10, 10, 1), (20, 20, 30, 30, 2)) for _ in range(20))
RULE = Divergence(window=20)


def observe(served: tuple[Boxes, ...]) -> Observation:
    return Observation(time=0.0, live=True, zeros_ok=True, detections=served, baseline_detections=BASE[:len(served)])


def test_the_same_detections_agree() -> None:
    finding = assess("divergence", RULE, observe(BASE))
    assert finding.outcome is Outcome.OK
    assert finding.values == {"box_agreement": 1.0, "count_diff": 0.0}


def test_boxes_shifted_by_half_a_box_breach() -> None:
    shifted = tuple(frame((5, 5, 15, 15, 1), (25, 25, 35, 35, 2)) for _ in range(20))  # IoU 25/175 = 0.14
    finding = assess("divergence", RULE, observe(shifted))
    assert finding.outcome is Outcome.BREACH
    assert finding.values["box_agreement"] == 0.0
    assert "0% of boxes match" in finding.detail


def test_no_detections_breach_on_the_count_as_well() -> None:
    finding = assess("divergence", RULE, observe(tuple(Boxes.empty() for _ in range(20))))
    assert finding.outcome is Outcome.BREACH
    assert finding.values == {"box_agreement": 0.0, "count_diff": 2.0}


def test_a_confused_class_breaches_though_every_box_is_in_place() -> None:
    confused = tuple(frame((0, 0, 10, 10, 2), (20, 20, 30, 30, 1)) for _ in range(20))
    assert assess("divergence", RULE, observe(confused)).outcome is Outcome.BREACH


def test_one_box_missing_in_a_few_frames_holds() -> None:
    served = tuple(frame((0, 0, 10, 10, 1)) if i < 3 else BASE[i] for i in range(20))
    finding = assess("divergence", RULE, observe(served))
    assert finding.outcome is Outcome.OK
    assert finding.values["box_agreement"] == (40 - 3) / 40


def test_too_few_frames_or_no_baseline_is_inconclusive() -> None:
    assert assess("divergence", RULE, observe(BASE[:5])).outcome is Outcome.INCONCLUSIVE
    no_base = Observation(time=0.0, live=True, zeros_ok=True, detections=BASE)
    assert assess("divergence", RULE, no_base).outcome is Outcome.INCONCLUSIVE


def test_nan_boxes_breach() -> None:
    nan = tuple(frame((np.nan, 0, 10, 10, 1)) for _ in range(20))
    finding = assess("divergence", RULE, observe(nan))
    assert finding.outcome is Outcome.BREACH and "not finite" in finding.detail


def test_padded_zeros_are_no_breach_for_a_detector_but_nan_is() -> None:
    padded = {"BOXES": np.zeros((4, 32, 4), np.float32), "COUNT": np.zeros((4, 1), np.int32)}
    rule = OutputSanity()
    assert assess("output_sanity", rule, Observation(0.0, True, outputs=padded, zeros_ok=True)).outcome is Outcome.OK
    assert assess("output_sanity", rule, Observation(0.0, True, outputs=padded)).outcome is Outcome.BREACH
    padded["BOXES"][0, 0, 0] = np.nan
    assert not sanity(padded, 1e6, zeros_ok=True).passed


def test_a_golden_pass_whose_map_dropped_breaches() -> None:
    rule = GoldenScore(max_map_drop=0.05)
    held = Observation(0.0, True, zeros_ok=True, golden_map=0.70, baseline_map=0.74)
    dropped = Observation(0.0, True, zeros_ok=True, golden_map=0.60, baseline_map=0.74)
    assert assess("golden_score", rule, held).outcome is Outcome.OK
    finding = assess("golden_score", rule, dropped)
    assert finding.outcome is Outcome.BREACH and "14.0 points" in finding.detail
    pending = Observation(0.0, True, zeros_ok=True)
    assert assess("golden_score", rule, pending).outcome is Outcome.INCONCLUSIVE


TRUTHS = [frame((0, 0, 10, 10, 0)), frame((0, 0, 10, 10, 1))]


def test_the_promote_gate_allows_the_documented_three_points() -> None:
    policy = PromotionPolicy(max_map_drop=0.03)
    perfect = mean_average_precision(TRUTHS, TRUTHS)
    assert compare_maps(perfect, perfect, policy).passed
    # One of two classes found: mAP 0.5 against 1.0.
    half = mean_average_precision([TRUTHS[0], Boxes.empty()], TRUTHS)
    verdict = compare_maps(half, perfect, policy)
    assert not verdict.passed
    assert "50.0 points below" in verdict.reason and "worst class 1" in verdict.reason
    assert verdict.metrics["map50_95"] == 0.5 and verdict.metrics["served_map50_95"] == 1.0


def test_a_candidate_that_finds_nothing_is_refused_for_that() -> None:
    nothing = mean_average_precision([Boxes.empty(), Boxes.empty()], TRUTHS)
    verdict = compare_maps(nothing, None, PromotionPolicy())
    assert not verdict.passed and "no detections on the golden set (2 objects" in verdict.reason


def test_min_map_and_the_chosen_metric() -> None:
    loose = [frame((0, 0, 10, 12, 0)), frame((0, 0, 10, 12, 1))]  # IoU 10/12 = 0.83: AP50 1, AP50:95 0.7
    found = mean_average_precision(loose, TRUTHS)
    assert compare_maps(found, None, PromotionPolicy(min_map=0.9, map_metric="map50")).passed
    verdict = compare_maps(found, None, PromotionPolicy(min_map=0.9))
    assert not verdict.passed and "golden map50_95 0.700 below the minimum 0.900" in verdict.reason
