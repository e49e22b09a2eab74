"""Streaming divergence accumulators and the latency window, on literal arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.core.shadow_stats import (
    DetectionAccumulator,
    LatencyWindow,
    ShadowReport,
    TensorAccumulator,
    is_detection,
)


def test_identical_outputs_show_no_divergence() -> None:
    acc = TensorAccumulator()
    out = np.array([[0.1, 0.9, -0.3], [1.0, 0.0, 2.0]], np.float32)
    acc.add(out, out.copy())
    s = acc.summary()
    assert s.samples == 2 and s.mean_abs_diff == 0 and s.max_abs_diff == 0
    assert abs(s.mean_cosine - 1) < 1e-12 and s.top1_agreement == 1.0


def test_shifted_classes_lose_top1_and_cosine() -> None:
    acc = TensorAccumulator()
    served = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    acc.add(np.roll(served, 1, axis=1), served)
    s = acc.summary()
    assert s.top1_agreement == 0.0 and s.mean_cosine == 0.0 and s.max_abs_diff == 1.0 and s.mean_abs_diff == 0.5


def test_streaming_equals_one_batch() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    whole, parts = TensorAccumulator(), TensorAccumulator()
    whole.add(a, b)
    for i in range(0, 6, 2):
        parts.add(a[i:i + 2], b[i:i + 2])
    one, streamed = whole.summary(), parts.summary()
    for name in ("mean_abs_diff", "max_abs_diff", "mean_rel_diff", "mean_cosine", "min_cosine", "top1_agreement"):
        assert getattr(one, name) == pytest.approx(getattr(streamed, name), rel=1e-12)


def test_nonfinite_values_are_counted_not_averaged() -> None:
    acc = TensorAccumulator()
    acc.add(np.array([[np.nan, 1.0, np.inf]]), np.array([[0.0, 1.0, 2.0]]))
    s = acc.summary()
    assert (s.candidate_nan, s.candidate_inf, s.served_nan) == (1, 1, 0)
    assert np.isfinite(s.mean_abs_diff) and s.mean_abs_diff == 0.0


def test_shape_mismatch_is_counted() -> None:
    acc = TensorAccumulator()
    acc.add(np.zeros((1, 3)), np.zeros((1, 4)))
    assert acc.summary().shape_mismatches == 1 and acc.summary().samples == 0


def test_latency_window_is_bounded() -> None:
    window = LatencyWindow(size=10)
    for ms in range(1, 101):
        window.add(float(ms))
    s = window.summary()
    assert len(window.values) == 10 and s.count == 100 and s.mean_ms == 50.5
    assert s.p50_ms == 95.0 and s.p99_ms == 100.0


def test_report_round_trips_through_a_dict() -> None:
    acc = TensorAccumulator()
    acc.add(np.ones((2, 3)), np.ones((2, 3)))
    report = ShadowReport("m", 2, compared=2, tensors={"OUT": acc.summary()}, candidate_server_mean_ms=2.0)
    assert ShadowReport.from_dict(report.to_dict()) == report


# --- a detector's outputs ---------------------------------------------------------------------------
def detections(*frames: list[tuple[int, tuple[float, float, float, float]]], k: int = 4) -> dict[str, np.ndarray]:
    """Padded outputs (BOXES [n, k, 4], SCORES, CLASSES, COUNT) of frames of (class, box) rows."""
    boxes, scores = np.zeros((len(frames), k, 4), np.float32), np.zeros((len(frames), k), np.float32)
    classes, count = np.zeros((len(frames), k), np.int32), np.zeros((len(frames), 1), np.int32)
    for i, rows in enumerate(frames):
        count[i] = len(rows)
        for j, (cls, box) in enumerate(rows):
            boxes[i, j], scores[i, j], classes[i, j] = box, 0.9, cls
    return {"BOXES": boxes, "SCORES": scores, "CLASSES": classes, "COUNT": count}


SQUARE, DISC = (0, (10.0, 10.0, 30.0, 30.0)), (1, (40.0, 40.0, 60.0, 60.0))


def test_identical_detections_agree_fully() -> None:
    acc = DetectionAccumulator()
    served = detections([SQUARE, DISC], [SQUARE])
    acc.add(served, served)
    s = acc.summary()
    assert (s.frames, s.matched_share, s.count_diff) == (2, 1.0, 0.0)
    assert s.candidate_per_frame == s.served_per_frame == 1.5
    assert s.candidate_class_shares == s.served_class_shares == {0: 2 / 3, 1: 1 / 3}


def test_detection_agreement_streams_over_requests() -> None:
    acc = DetectionAccumulator()
    acc.add(detections([SQUARE, DISC]), detections([SQUARE, DISC]))
    shifted = (0, (20.0, 20.0, 40.0, 40.0))  # IoU 1/7 with SQUARE
    acc.add(detections([shifted]), detections([SQUARE, DISC]))  # one box found, and that one moved
    s = acc.summary()
    assert s.frames == 2 and s.matched_share == 2 / 4 and s.count_diff == 0.5
    assert s.candidate_per_frame == 1.5 and s.served_per_frame == 2.0
    assert s.candidate_class_shares == {0: 2 / 3, 1: 1 / 3} and s.served_class_shares == {0: 0.5, 1: 0.5}


def test_broken_candidate_detections_are_counted() -> None:
    acc = DetectionAccumulator()
    nan = detections([SQUARE])
    nan["SCORES"][0, 0] = np.nan
    acc.add(nan, detections([SQUARE]))
    bad = detections([SQUARE])
    bad["COUNT"][0] = 9  # more rows than K
    acc.add(bad, detections([SQUARE]))
    s = acc.summary()
    assert (s.candidate_nonfinite, s.served_nonfinite, s.undecodable, s.frames) == (1, 0, 1, 1)


def test_nothing_found_on_either_side_is_agreement() -> None:
    acc = DetectionAccumulator()
    acc.add(detections([]), detections([]))
    assert acc.summary().matched_share == 1.0 and acc.summary().count_diff == 0.0
    assert is_detection(detections([])) and not is_detection({"LOGITS": np.zeros(3)})


def test_a_detector_report_round_trips_through_json() -> None:
    acc = DetectionAccumulator()
    acc.add(detections([SQUARE]), detections([SQUARE, DISC]))
    report = ShadowReport("detector", 2, compared=1, detection=acc.summary(), served_versions={1: 1})
    again = ShadowReport.from_dict(json.loads(json.dumps(report.to_dict())))  # class keys become strings
    assert again == report and again.detection is not None and again.detection.served_class_shares == {0: .5, 1: .5}
    assert ShadowReport.from_dict(ShadowReport("m", 1).to_dict()).detection is None
