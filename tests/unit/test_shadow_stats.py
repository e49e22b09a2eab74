"""Streaming divergence accumulators and the latency window, on literal arrays."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.shadow_stats import LatencyWindow, ShadowReport, TensorAccumulator


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
