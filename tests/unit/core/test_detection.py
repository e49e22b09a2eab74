"""Detection quality: IoU, COCO-style mAP, agreement, decoding; expected values worked by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from orchestrator.core import detection
from orchestrator.core.detection import (
    IOU_THRESHOLDS,
    Agreement,
    Boxes,
    DetectionOutputs,
    MapReport,
    agreement,
    average_precision,
    class_shares,
    decode,
    detections_per_frame,
    iou_matrix,
    match,
    mean_average_precision,
    truth_table,
    truths_from_table,
)

A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
BACKGROUND = [60, 60, 70, 70]  # overlaps no truth


def truth(*rows: tuple[list[float], int]) -> Boxes:
    return Boxes(np.array([box for box, _ in rows], dtype=float).reshape(-1, 4), np.array([c for _, c in rows]))


def found(*rows: tuple[list[float], int, float]) -> Boxes:
    return Boxes(np.array([box for box, _, _ in rows], dtype=float).reshape(-1, 4),
                 np.array([c for _, c, _ in rows]), np.array([s for _, _, s in rows], dtype=float))


# --- IoU


def test_iou_of_identical_disjoint_overlapping_and_degenerate_boxes() -> None:
    assert iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[0, 0, 2, 2]])).tolist() == [[1.0]]
    assert iou_matrix(np.array([[0, 0, 1, 1]]), np.array([[2, 2, 3, 3]])).tolist() == [[0.0]]
    # Touching edges share no area.
    assert iou_matrix(np.array([[0, 0, 1, 1]]), np.array([[1, 0, 2, 1]])).tolist() == [[0.0]]
    # [0,0,2,2] and [1,1,3,3]: intersection [1,1,2,2] = 1, union 4 + 4 - 1 = 7.
    assert iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))[0, 0] == pytest.approx(1 / 7)
    # A zero-area box (a point, a line) and a NaN box: 0, never NaN, and no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        degenerate = iou_matrix(np.array([[1, 1, 1, 1], [0, 0, 0, 5], [np.nan, 0, 1, 1], [0, 0, np.inf, 1]]),
                                np.array([[1, 1, 1, 1], [0, 0, 2, 2]]))
    assert degenerate.tolist() == [[0.0, 0.0]] * 4


def test_iou_matrix_shapes() -> None:
    # Rows are a, columns b. [0,0,4,1] vs [1,0,5,1]: intersection 3, union 4 + 4 - 3 = 5: 3/5.
    matrix = iou_matrix(np.array([[0, 0, 4, 1], [10, 10, 11, 11]]),
                        np.array([[0, 0, 4, 1], [1, 0, 5, 1], [9, 9, 9, 9]]))
    assert matrix.shape == (2, 3)
    assert matrix.tolist() == [[1.0, 0.6, 0.0], [0.0, 0.0, 0.0]]
    assert iou_matrix(np.zeros((0, 4)), np.array([A])).shape == (0, 1)
    assert iou_matrix(np.array([A]), np.zeros((0, 4))).shape == (1, 0)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        iou_matrix(np.zeros((2, 3)), np.zeros((1, 4)))


def test_iou_thresholds_are_the_exact_coco_decimals() -> None:
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


# --- Boxes


def test_boxes_coerce_validate_and_compare() -> None:
    boxes = Boxes(np.array([A], dtype=np.float32), np.array([2.0]), np.array([0.5], dtype=np.float32))
    assert boxes.boxes.dtype == np.float64 and boxes.classes.dtype == np.int64 and boxes.classes.tolist() == [2]
    assert len(boxes) == 1 and len(Boxes.empty()) == 0 and Boxes.empty().boxes.shape == (0, 4)
    assert boxes == Boxes(np.array([A]), np.array([2]), np.array([0.5]))
    assert boxes != Boxes(np.array([A]), np.array([2]))
    assert Boxes(np.array([[np.nan, 0, 1, 1]]), np.array([np.nan])).classes.tolist() == [-1]
    with pytest.raises(ValueError, match="classes must be"):
        Boxes(np.array([A, B]), np.array([0]))
    with pytest.raises(ValueError, match="scores must be"):
        Boxes(np.array([A]), np.array([0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="boxes must be"):
        Boxes(np.array([[0, 0, 1]]), np.array([0]))


# --- matching and AP


def test_a_perfect_detector_scores_one() -> None:
    truths = [truth((A, 0), (B, 1)), truth((C, 1)), truth()]
    detections = [found((A, 0, 0.9), (B, 1, 0.8)), found((C, 1, 0.7)), found()]
    report = mean_average_precision(detections, truths)
    assert (report.map50, report.map50_95) == (1.0, 1.0)
    assert report.per_class50 == {0: 1.0, 1: 1.0} and report.per_class50_95 == {0: 1.0, 1: 1.0}
    assert (report.truths, report.detections) == (3, 3)


def test_a_false_positive_ranked_between_two_true_positives() -> None:
    # 2 truths; ranked TP, FP, TP:
    #   recall    1/2, 1/2, 1      precision 1, 1/2, 2/3   monotone from the right: 1, 2/3, 2/3
    #   recall points 0.00..0.50 (51 of them) read precision 1, 0.51..1.00 (50) read 2/3:
    #   AP = (51 * 1 + 50 * 2/3) / 101 = (153/3 + 100/3) / 101 = 253/303 = 0.83498...
    truths = [truth((A, 0), (B, 0))]
    detections = [found((A, 0, 0.9), (BACKGROUND, 0, 0.8), (B, 0, 0.7))]
    assert average_precision(detections, truths, 0, 0.5) == pytest.approx(253 / 303)
    report = mean_average_precision(detections, truths)
    # Exact boxes: the same at every threshold.
    assert report.map50 == pytest.approx(253 / 303) and report.map50_95 == pytest.approx(253 / 303)


def test_a_false_positive_ranked_first() -> None:
    # 2 truths; ranked FP, TP, TP: recall 0, 1/2, 1; precision 0, 1/2, 2/3; monotone: 2/3, 2/3, 2/3.
    # Every recall point (recall 0 is reached at rank 1) reads 2/3: AP = 101 * (2/3) / 101 = 2/3.
    truths = [truth((A, 0), (B, 0))]
    detections = [found((BACKGROUND, 0, 0.95), (A, 0, 0.9), (B, 0, 0.7))]
    assert average_precision(detections, truths, 0, 0.5) == pytest.approx(2 / 3)


def test_precision_is_zero_beyond_the_highest_recall_reached() -> None:
    # 3 truths, one never found; ranked TP, FP, FP, TP:
    #   recall 1/3, 1/3, 1/3, 2/3; precision 1, 1/2, 1/3, 1/2; monotone: 1, 1/2, 1/2, 1/2.
    #   points 0.00..0.33 (34) read 1; 0.34..0.66 (33) read 1/2; 0.67..1.00 (34) read 0:
    #   AP = (34 + 33/2) / 101 = 50.5 / 101 = 1/2.
    truths = [truth((A, 0), (B, 0)), truth((C, 0))]
    detections = [found((A, 0, 0.9), (BACKGROUND, 0, 0.8)), found((BACKGROUND, 0, 0.7), (C, 0, 0.6))]
    assert average_precision(detections, truths, 0, 0.5) == pytest.approx(0.5)


def test_ranking_is_over_all_images_not_per_image() -> None:
    # Image 1 holds the FP with the top score, image 0 the two TPs below it: FP, TP, TP over 2 truths = 2/3,
    # as in test_a_false_positive_ranked_first; per-image ranking would give TP, TP, FP = 1.
    truths = [truth((A, 0), (B, 0)), truth()]
    detections = [found((A, 0, 0.9), (B, 0, 0.7)), found((BACKGROUND, 0, 0.95))]
    assert average_precision(detections, truths, 0, 0.5) == pytest.approx(2 / 3)


def test_a_box_of_iou_0_6_passes_three_of_the_ten_thresholds() -> None:
    # Truth [0,0,40,10], detection shifted by 10: intersection 30 x 10 = 300, union 400 + 400 - 300 = 500,
    # IoU 300/500 = 0.6. Thresholds 0.50, 0.55 and 0.60 (0.6 >= 0.6) give AP 1, the other seven 0:
    # mAP50:95 = 3/10.
    truths = [truth(([0, 0, 40, 10], 0))]
    detections = [found(([10, 0, 50, 10], 0, 0.9))]
    assert iou_matrix(detections[0].boxes, truths[0].boxes)[0, 0] == 0.6
    assert average_precision(detections, truths, 0, 0.5) == 1.0
    assert average_precision(detections, truths, 0, 0.6) == 1.0
    assert average_precision(detections, truths, 0, 0.65) == 0.0
    assert average_precision(detections, truths, 0, 0.75) == 0.0
    report = mean_average_precision(detections, truths)
    assert report.map50 == 1.0 and report.map50_95 == pytest.approx(0.3)
    assert report.per_class50_95[0] == pytest.approx(0.3)


def test_any_threshold_in_the_unit_interval() -> None:
    # [0,0,10,10] vs [6,0,16,10]: intersection 4 x 10 = 40, union 100 + 100 - 40 = 160: IoU 1/4.
    truths, detections = [truth((A, 0))], [found(([6, 0, 16, 10], 0, 0.9))]
    assert average_precision(detections, truths, 0, 0.25) == 1.0
    assert average_precision(detections, truths, 0, 0.3) == 0.0
    assert average_precision([found((A, 0, 0.9))], truths, 0, 1.0) == 1.0


def test_threshold_edge_survives_float_rounding() -> None:
    # [0.1,0,0.7,1] vs [0.3,0,0.7,1]: intersection 0.4, union 0.6: IoU 2/3 in exact arithmetic; in floats the
    # widths 0.7 - 0.1 and 0.7 - 0.3 are rounded and the IoU computes to 0.6666666666666665, one step below
    # the float 2/3; it must still reach a threshold of 2/3.
    assert iou_matrix(np.array([[0.1, 0, 0.7, 1]]), np.array([[0.3, 0, 0.7, 1]]))[0, 0] < 2 / 3
    truths = [truth(([0.1, 0, 0.7, 1], 0))]
    detections = [found(([0.3, 0, 0.7, 1], 0, 0.9))]
    assert average_precision(detections, truths, 0, 2 / 3) == 1.0
    assert average_precision(detections, truths, 0, 0.67) == 0.0


def test_right_box_wrong_class_scores_zero_for_both_classes() -> None:
    truths = [truth((A, 0), (B, 1))]
    detections = [found((A, 1, 0.9), (B, 0, 0.8))]
    report = mean_average_precision(detections, truths)
    assert report.per_class50 == {0: 0.0, 1: 0.0} and report.map50 == 0.0 and report.map50_95 == 0.0


def test_two_detections_on_one_truth_are_one_true_and_one_false_positive() -> None:
    one = truth((A, 0))
    assert match(found((A, 0, 0.9), ([0, 0, 10, 9], 0, 0.8)), one).tolist() == [True, False]
    # The higher score takes the truth whatever the input order.
    assert match(found((A, 0, 0.8), (A, 0, 0.9)), one).tolist() == [False, True]
    # Ties keep input order.
    assert match(found((A, 0, 0.9), (A, 0, 0.9)), one).tolist() == [True, False]
    # With a second truth found after the duplicate: TP, FP, TP over 2 truths = 253/303 (worked above).
    truths = [truth((A, 0), (B, 0))]
    detections = [found((A, 0, 0.9), (A, 0, 0.8), (B, 0, 0.7))]
    assert average_precision(detections, truths, 0, 0.5) == pytest.approx(253 / 303)


def test_a_detection_takes_the_free_truth_of_highest_iou() -> None:
    # Truths [0,0,10,10] and [0,0,10,8]; the detection [0,0,10,9] has IoU 90/100 = 0.9 with the first and
    # 80/90 = 0.889 with the second: it takes the first. The next, [0,0,10,10], then finds only the second
    # (IoU 80/100 = 0.8).
    truths = truth((A, 0), ([0, 0, 10, 8], 0))
    assert match(found(([0, 0, 10, 9], 0, 0.9), (A, 0, 0.8)), truths).tolist() == [True, True]
    # At 0.85 the second detection (0.8 with what is left) is a false positive.
    assert match(found(([0, 0, 10, 9], 0, 0.9), (A, 0, 0.8)), truths, 0.85).tolist() == [True, False]


def test_no_detections_score_zero() -> None:
    report = mean_average_precision([found(), Boxes.empty()], [truth((A, 0)), truth((B, 1))])
    assert report == MapReport(0.0, 0.0, {0: 0.0, 1: 0.0}, {0: 0.0, 1: 0.0}, truths=2, detections=0)


def test_nan_scores_and_boxes_are_false_positives_ranked_first() -> None:
    one = [truth((A, 0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A NaN score on the very box of the truth is ranked first and matches nothing: FP, TP over 1 truth:
        # precision 0, 1/2, monotone 1/2, 1/2; every point reads 1/2: AP = 1/2 (1 without the NaN).
        assert average_precision([found((A, 0, np.nan), (A, 0, 0.9))], one, 0, 0.5) == pytest.approx(0.5)
        assert match(found((A, 0, np.nan), (A, 0, 0.9)), one[0]).tolist() == [False, True]
        # A NaN box with the top score: the same FP, TP.
        assert average_precision([found(([np.nan, 0, 10, 10], 0, 0.95), (A, 0, 0.9))], one, 0, 0.5) == \
            pytest.approx(0.5)
        # Nothing but NaN: 0, not NaN, no crash.
        report = mean_average_precision([found((A, 0, np.nan), ([np.nan] * 4, 0, np.inf))], one)
    assert (report.map50, report.map50_95) == (0.0, 0.0)


def test_a_class_without_truth_is_left_out_of_the_mean() -> None:
    truths = [truth((A, 0))]
    detections = [found((A, 0, 0.9), (B, 7, 0.95))]
    report = mean_average_precision(detections, truths)
    assert report.map50 == 1.0 and report.per_class50 == {0: 1.0} and report.detections == 2
    assert average_precision(detections, truths, 7, 0.5) is None


def test_no_truth_anywhere_is_no_measure() -> None:
    report = mean_average_precision([found((A, 0, 0.9))], [truth()])
    assert report == MapReport(0.0, 0.0, {}, {}, truths=0, detections=1)
    assert mean_average_precision([], []).truths == 0


def test_map_refuses_mismatched_images_missing_scores_and_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="2 images of detections for 1"):
        mean_average_precision([found(), found()], [truth()])
    with pytest.raises(ValueError, match="image 0 have no scores"):
        mean_average_precision([truth((A, 0))], [truth((A, 0))])
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            average_precision([found()], [truth()], 0, bad)


def test_map_report_metrics() -> None:
    report = MapReport(0.75, 0.5, {0: 1.0, 3: 0.5}, {0: 0.75, 3: 0.25}, truths=4, detections=5)
    assert report.as_metrics() == {"map50": 0.75, "map50_95": 0.5, "ap50_class_0": 1.0, "ap50_class_3": 0.5}
    assert report.as_metrics("served_") == {"served_map50": 0.75, "served_map50_95": 0.5,
                                            "served_ap50_class_0": 1.0, "served_ap50_class_3": 0.5}


# --- agreement


def test_identical_detections_agree_fully() -> None:
    frames = [found((A, 0, 0.9), (B, 1, 0.8)), found((C, 2, 0.7)), found()]
    assert agreement(frames, frames) == Agreement(matched_share=1.0, count_diff=0.0, frames=3, boxes_a=3, boxes_b=3)


def test_boxes_shifted_beyond_the_iou_agree_not_at_all() -> None:
    # [0,0,10,10] vs [6,0,16,10]: intersection 4 x 10 = 40, union 100 + 100 - 40 = 160: IoU 1/4 < 1/2.
    result = agreement([found((A, 0, 0.9))], [found(([6, 0, 16, 10], 0, 0.9))])
    assert (result.matched_share, result.count_diff) == (0.0, 0.0)
    # Same box, other class: no match either.
    assert agreement([truth((A, 0))], [truth((A, 1))]).matched_share == 0.0


def test_a_frame_missing_a_box() -> None:
    # Frame 0: 2 and 2 boxes, 2 matched; frame 1: 3 against 2, 2 matched.
    # matched_share = (2 + 2) / (max(2, 2) + max(3, 2)) = 4/5; count_diff = (0 + 1) / 2 = 1/2.
    a = [truth((A, 0), (B, 1)), truth((A, 0), (B, 0), (C, 1))]
    b = [truth((A, 0), (B, 1)), truth((A, 0), (C, 1))]
    result = agreement(a, b)
    assert result == Agreement(matched_share=pytest.approx(0.8), count_diff=0.5, frames=2, boxes_a=5, boxes_b=4)
    assert result.as_metrics("fallback_") == {"fallback_matched_share": pytest.approx(0.8), "fallback_count_diff": 0.5,
                                              "fallback_frames": 2.0, "fallback_boxes_a": 5.0, "fallback_boxes_b": 4.0}


def test_agreement_is_one_to_one_highest_iou_first() -> None:
    # a's two boxes both overlap b's one box ([0,0,10,9]: IoU 0.9; [0,0,10,10] exact: 1.0): one match, of
    # max(2, 1) = 2 boxes: 1/2.
    result = agreement([truth(([0, 0, 10, 9], 0), (A, 0))], [truth((A, 0))])
    assert result.matched_share == 0.5 and result.count_diff == 1.0


def test_nothing_found_by_either_agrees_fully() -> None:
    assert agreement([found(), found()], [Boxes.empty(), Boxes.empty()]) == Agreement(1.0, 0.0, 2, 0, 0)
    assert agreement([], []) == Agreement(1.0, 0.0, 0, 0, 0)
    # One side empty: nothing matched of 1 box.
    assert agreement([found((A, 0, 0.9))], [found()]).matched_share == 0.0


def test_agreement_needs_the_same_frames() -> None:
    with pytest.raises(ValueError, match="2 frames against 1"):
        agreement([found(), found()], [found()])


# --- counts and shares


def test_detections_per_frame_and_class_shares() -> None:
    frames = [truth((A, 0), (B, 0), (C, 1)), truth((A, 2)), truth()]
    assert detections_per_frame(frames).tolist() == [3, 1, 0]
    # 4 boxes: class 0 has 2, class 1 has 1; class 2 is outside 0..1 and counts only in the total.
    assert class_shares(frames, 2).tolist() == [0.5, 0.25]
    assert class_shares(frames, 3).tolist() == [0.5, 0.25, 0.25]
    assert class_shares([truth()], 3).tolist() == [0.0, 0.0, 0.0]
    assert detections_per_frame([]).tolist() == []


# --- decoding padded outputs


def padded() -> dict[str, np.ndarray]:
    boxes = np.full((2, 3, 4), np.nan, dtype=np.float32)  # padding is garbage
    boxes[0, :2] = [A, B]
    scores = np.array([[0.9, 0.8, -1.0], [-1.0, -1.0, -1.0]], dtype=np.float32)
    classes = np.array([[1.0, 2.0, np.nan], [0.0, 0.0, 0.0]], dtype=np.float32)
    return {"BOXES": boxes, "SCORES": scores, "CLASSES": classes, "COUNT": np.array([[2], [0]], dtype=np.int32)}


def test_decode_keeps_the_counted_rows_of_each_frame() -> None:
    frames = decode(padded())
    assert frames == [Boxes(np.array([A, B]), np.array([1, 2]), np.array([0.9, 0.8], dtype=np.float32)),
                      Boxes(np.zeros((0, 4)), np.zeros(0, dtype=int), np.zeros(0))]
    assert frames[0].boxes.tolist() == [A, B] and frames[0].classes.tolist() == [1, 2]
    assert len(frames[1]) == 0 and frames[1].scores is not None
    # A flat count works too, and other names.
    outputs = {name.lower(): value for name, value in padded().items()}
    outputs["count"] = np.array([1, 3])
    names = DetectionOutputs("boxes", "scores", "classes", "count")
    assert names.names() == ["boxes", "scores", "classes", "count"]
    assert [len(frame) for frame in decode(outputs, names)] == [1, 3]
    # NaN in counted rows is kept (NaN class: -1).
    outputs["count"] = np.array([3, 0])
    assert decode(outputs, names)[0].classes.tolist() == [1, 2, -1]
    assert np.isnan(decode(outputs, names)[0].boxes[2]).all()


@pytest.mark.parametrize(("change", "message"), [
    ({"COUNT": np.array([[4], [0]])}, r"COUNT of frame 0 is 4, not a row count in 0\.\.3"),
    ({"COUNT": np.array([[1], [-1]])}, "COUNT of frame 1 is -1"),
    ({"COUNT": np.array([[1.5], [0]])}, "COUNT of frame 0 is 1.5"),
    ({"COUNT": np.array([[np.nan], [0]])}, "COUNT of frame 0 is nan"),
    ({"COUNT": np.array([1, 1, 1])}, r"COUNT must be \(2,\) or \(2, 1\)"),
    ({"SCORES": np.zeros((1, 3))}, r"SCORES must be \(batch, K\) = \(2, 3\)"),
    ({"CLASSES": np.zeros((2, 4))}, r"CLASSES must be \(batch, K\)"),
    ({"BOXES": np.zeros((2, 3, 5))}, r"BOXES must be \(batch, K, 4\)"),
])
def test_decode_refuses_inconsistent_outputs(change: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode({**padded(), **change})


def test_decode_names_a_missing_tensor() -> None:
    outputs = padded()
    del outputs["SCORES"]
    with pytest.raises(ValueError, match="no output 'SCORES'"):
        decode(outputs)


# --- ground truth tables


def test_truth_table_round_trip() -> None:
    table = np.array([[0, 1, 0, 0, 10, 10], [2, 0, 1.5, 2, 3.25, 4], [0, 3, 20, 20, 30, 30]], dtype=np.float32)
    truths = truths_from_table(table, 4)
    assert [len(t) for t in truths] == [2, 0, 1, 0]
    assert truths[0] == truth((A, 1), (B, 3)) and truths[2] == truth(([1.5, 2, 3.25, 4], 0))
    back = truth_table(truths)
    assert back.dtype == np.float32 and back.shape == (3, 6)
    # Rows come back in frame order; within a frame in file order.
    assert back.tolist() == table[[0, 2, 1]].tolist()
    assert truths_from_table(back, 4) == truths
    assert truths_from_table(np.zeros(0), 2) == [Boxes.empty(), Boxes.empty()]
    assert truth_table([]).shape == (0, 6)


@pytest.mark.parametrize(("table", "message"), [
    ([[3, 0, 0, 0, 1, 1]], r"frame index 3, outside 0\.\.2"),
    ([[-1, 0, 0, 0, 1, 1]], "frame index -1"),
    ([[0.5, 0, 0, 0, 1, 1]], "frame index 0.5"),
    ([[0, 1, 0, 0, 1, 1], [np.nan, 0, 0, 0, 1, 1]], "truth row 1 has frame index nan"),
    ([[0, -1, 0, 0, 1, 1]], "truth row 0 has class -1"),
    ([[0, 0, 0, np.nan, 1, 1]], "non-finite box"),
    ([[0, 0, 0, 0, 1]], r"got shape \(1, 5\)"),
    ([0, 0, 0, 0, 1, 1], r"got shape \(6,\)"),
])
def test_truth_table_refuses_bad_rows(table: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        truths_from_table(np.array(table, dtype=float), 3)


# --- against a brute-force reference


def _reference_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_curve(detections: list[Boxes], truths: list[Boxes], cls: int, iou: float) -> tuple[list, list]:
    """Recall and monotone precision of one class by plain loops, the textbook way."""
    ranked, positives = [], 0
    for image, (found_, truth_) in enumerate(zip(detections, truths, strict=True)):
        gts = [box for box, c in zip(truth_.boxes.tolist(), truth_.classes.tolist(), strict=True) if c == cls]
        positives += len(gts)
        taken = [False] * len(gts)
        mine = [(s, box) for box, c, s in zip(found_.boxes.tolist(), found_.classes.tolist(),
                                              found_.scores.tolist(), strict=True) if c == cls]
        for score, box in sorted(mine, key=lambda pair: -pair[0]):
            options = [(_reference_iou(box, g), -j) for j, g in enumerate(gts) if not taken[j]]
            options = [o for o in options if o[0] >= iou]
            if options:
                taken[-max(options)[1]] = True
            ranked.append((score, image, bool(options)))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    recall, precision, tp = [], [], 0
    for rank, (_, _, hit) in enumerate(ranked, start=1):
        tp += hit
        recall.append(tp / positives)
        precision.append(tp / rank)
    envelope = [max(precision[i:]) for i in range(len(precision))]
    return recall, envelope


def _reference_101(recall: list, envelope: list) -> float:
    return sum(max([p for r, p in zip(recall, envelope, strict=True) if r >= k / 100], default=0.0)
               for k in range(101)) / 101


def _reference_all_points(recall: list, envelope: list) -> float:
    return sum((r - previous) * p for previous, r, p in zip([0.0, *recall[:-1]], recall, envelope, strict=True))


def _random_case(rng: np.random.Generator) -> tuple[list[Boxes], list[Boxes]]:
    detections, truths = [], []
    for _ in range(int(rng.integers(1, 6))):
        m = int(rng.integers(0, 6))
        corners = rng.integers(0, 60, size=(m, 2))
        sizes = rng.integers(10, 30, size=(m, 2))
        gt = np.hstack([corners, corners + sizes]).astype(float)
        gt_classes = rng.integers(0, 3, size=m)
        # Detections: jittered copies of some truths (some with the wrong class) and some strays.
        keep = rng.random(m) < 0.8
        jitter = gt[keep] + rng.integers(-2, 3, size=(int(keep.sum()), 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        strays = int(rng.integers(0, 3))
        stray_corners = rng.integers(0, 60, size=(strays, 2))
        stray = np.hstack([stray_corners, stray_corners + rng.integers(4, 20, size=(strays, 2))]).astype(float)
        boxes = np.vstack([jitter, stray])
        classes = np.concatenate([np.where(rng.random(int(keep.sum())) < 0.9, gt_classes[keep], rng.integers(0, 3)),
                                  rng.integers(0, 3, size=strays)])
        truths.append(Boxes(gt, gt_classes))
        detections.append(Boxes(boxes, classes, rng.random(len(boxes))))
    return detections, truths


@pytest.mark.parametrize("seed", range(40))
def test_ap_against_a_brute_force_reference(seed: int) -> None:
    detections, truths = _random_case(np.random.default_rng(seed))
    report = mean_average_precision(detections, truths)
    classes = sorted({c for t in truths for c in t.classes.tolist()})
    assert sorted(report.per_class50) == classes
    for cls in classes:
        per_threshold = []
        for iou in IOU_THRESHOLDS:
            recall, envelope = _reference_curve(detections, truths, cls, iou)
            expected = _reference_101(recall, envelope)
            assert average_precision(detections, truths, cls, iou) == pytest.approx(expected, abs=1e-12)
            # 101 samples of a non-increasing curve stay within 1/100 of its area.
            assert abs(expected - _reference_all_points(recall, envelope)) <= 0.0101
            per_threshold.append(expected)
        assert report.per_class50[cls] == pytest.approx(per_threshold[0], abs=1e-12)
        assert report.per_class50_95[cls] == pytest.approx(sum(per_threshold) / 10, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_matching_in_small_chunks_gives_the_same_ap(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Images are matched in padded chunks of bounded size; chunk boundaries must not change anything.
    detections, truths = _random_case(np.random.default_rng(seed))
    detections, truths = detections * 4, truths * 4
    whole = mean_average_precision(detections, truths)
    monkeypatch.setattr(detection, "_PAD_BUDGET", 30)
    assert detection._chunks(detections_per_frame(detections), detections_per_frame(truths))[1:]  # really split
    assert mean_average_precision(detections, truths) == whole
