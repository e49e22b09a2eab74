import numpy as np
import pytest

from orchestrator.core.checks import compare_scores, output_problems, sanity, top1_accuracy
from orchestrator.core.policy import PromotionPolicy


def test_healthy_outputs_pass():
    assert sanity({"LOGITS": np.array([[0.1, -2.0, 3.0]], np.float32)}, bound=1e6).passed


@pytest.mark.parametrize(("values", "expected"), [
    (np.array([1.0, np.nan, 2.0]), "1 NaN of 3"),
    (np.array([1.0, np.inf]), "1 Inf of 2"),
    (np.zeros((4, 10)), "all zeros"),
    (np.array([1.0, -5e9]), "explodes"),
])
def test_each_bad_output_is_named(values, expected):
    problems = output_problems("LOGITS", values.astype(np.float32), bound=1e6)
    assert any(expected in p for p in problems), problems
    assert not sanity({"LOGITS": values}, 1e6).passed


def test_accuracy_and_score_comparison():
    logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert top1_accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    policy = PromotionPolicy(max_score_drop=0.05, min_score=0.5)
    assert compare_scores(0.90, 0.93, policy).passed
    worse = compare_scores(0.80, 0.93, policy)
    assert not worse.passed and "worse than the served" in worse.reason
    assert worse.metrics == {"accuracy": 0.80, "served_accuracy": 0.93}
    assert not compare_scores(0.4, None, policy).passed
    assert compare_scores(0.6, None, policy).passed


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="keep_resident"):
        PromotionPolicy(keep_resident=-1)
    with pytest.raises(ValueError, match="output_bound"):
        PromotionPolicy(output_bound=float("inf"))
