"""Drift statistics, windows and baselines: pure, no server."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.drift import (
    Baseline,
    WindowAccumulator,
    row_features,
    sigma_floor,
    summarize,
    worst_deviation,
)
from orchestrator.core.policy import baseline_key


def test_row_features_per_statistic() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.5, 0.7]], np.float32)
    assert row_features("class_histogram", logits, 3, 0.5).tolist() == [1, 0]
    assert row_features("detection_count", logits, 3, 0.5).tolist() == [1, 2]
    assert row_features("mean", logits, 3, 0.5) == pytest.approx([1 / 3, 3.2 / 3])
    with pytest.raises(ValueError, match="not rows of 4"):
        row_features("mean", logits, 4, 0.5)
    with pytest.raises(ValueError, match="unknown drift statistic"):
        row_features("median", logits, 3, 0.5)


def test_histogram_counts_every_class_even_unseen_ones() -> None:
    assert summarize("class_histogram", np.array([0, 2, 2, 2.0]), 4).tolist() == [0.25, 0, 0.75, 0]
    assert summarize("detection_count", np.array([1, 3.0]), 5).tolist() == [2.0]


def test_windows_tumble_in_arrival_order() -> None:
    acc = WindowAccumulator("detection_count", size=3, row_size=1)
    acc.add(np.array([1, 2]))
    assert acc.pop() is None and acc.pending == 2
    acc.add(np.array([3, 10, 20, 30, 40]))
    assert acc.pop().tolist() == [2.0]  # type: ignore[union-attr]
    assert acc.pop().tolist() == [20.0]  # type: ignore[union-attr]
    assert acc.pop() is None and acc.pending == 1


def test_welford_baseline_matches_numpy_and_survives_a_round_trip() -> None:
    values = np.random.default_rng(0).normal(0.3, 0.05, (25, 4))
    baseline = Baseline("k")
    for row in values:
        baseline = baseline.add(row)
    assert baseline.windows == 25
    assert np.allclose(baseline.mean, values.mean(axis=0))
    assert np.allclose(baseline.sigma(), values.std(axis=0, ddof=1))
    assert Baseline.from_dict(baseline.to_dict()) == baseline
    with pytest.raises(ValueError, match="a statistic of 3 values for a baseline of 4"):
        baseline.add(np.zeros(3))


def test_one_window_has_no_spread_yet() -> None:
    assert Baseline("k").add(np.array([1.0, 2.0])).sigma().tolist() == [0.0, 0.0]


def test_a_never_seen_class_needs_several_rows_to_count_as_drift() -> None:
    # Baseline: class 1 never predicted (zero spread). One stray row must not be a 3-sigma event.
    baseline = Baseline("k")
    for _ in range(5):
        baseline = baseline.add(np.array([0.5, 0.0, 0.5]))
    one_row = worst_deviation("class_histogram", np.array([0.45, 0.05, 0.5]), baseline, window=20)
    assert one_row.component == 1 and one_row.z < 3
    many = worst_deviation("class_histogram", np.array([0.2, 0.4, 0.4]), baseline, window=20)
    assert many.component == 1 and many.z > 3


def test_floors() -> None:
    # Pooled share: (5 windows x 0 + 0.05) / 6, kept one row (1/20) away from 0.
    floor = sigma_floor("class_histogram", np.array([0.0, 0.5]), np.array([0.05, 0.5]), 20, 5)
    assert floor == pytest.approx([np.sqrt(0.05 * 0.95 * (1 / 20 + 1 / 100)), np.sqrt(0.25 * (1 / 20 + 1 / 100))])
    assert sigma_floor("mean", np.array([0.0, 200.0]), np.array([1.0, 1.0]), 100, 20) == pytest.approx([1e-6, 2e-4])


def test_a_short_baseline_that_underestimated_a_class_is_not_drift() -> None:
    # Seen in CI: a 5-window baseline put a class at 0.04 (truly about 0.10); windows with 4 of
    # 20 rows of it were 3.3 sigma off with the plain binomial floor. The pooled floor keeps it in.
    baseline = Baseline("k")
    for share in (0.05, 0.0, 0.05, 0.05, 0.05):
        baseline = baseline.add(np.array([share, 1 - share]))
    assert worst_deviation("class_histogram", np.array([0.2, 0.8]), baseline, window=20).z < 3
    assert worst_deviation("class_histogram", np.array([0.6, 0.4]), baseline, window=20).z > 3


def test_a_new_window_varies_more_than_the_baselines_own_spread() -> None:
    baseline = Baseline("k")
    for value in (1.0, 3.0):
        baseline = baseline.add(np.array([value]))
    deviation = worst_deviation("mean", np.array([4.0]), baseline, window=10)
    assert deviation.sigma == pytest.approx(np.sqrt(2.0) * np.sqrt(1.5))


def test_a_constant_statistic_breaches_only_when_it_really_changes() -> None:
    baseline = Baseline("k").add(np.array([4.0])).add(np.array([4.0]))
    assert worst_deviation("detection_count", np.array([4.0]), baseline, 50).z == 0
    assert worst_deviation("detection_count", np.array([3.0]), baseline, 50).z > 1e5


def test_nan_outputs_are_an_infinite_deviation() -> None:
    baseline = Baseline("k").add(np.array([1.0])).add(np.array([2.0]))
    assert worst_deviation("mean", np.array([np.nan]), baseline, 10).z == np.inf


def test_baseline_key_names_what_the_baseline_was_measured_with() -> None:
    assert baseline_key("class_histogram", "LOGITS", 50, 0.5) == "class_histogram:LOGITS:50"
    assert baseline_key("detection_count", "SCORES", 50, 0.25) == "detection_count:SCORES:50:0.25"
