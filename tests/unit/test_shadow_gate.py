"""The shadow gate as a pure function, the policy loader, and the promote-side check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.policy import ShadowPolicy
from orchestrator.core.shadow_gate import Outcome, shadow_gate
from orchestrator.core.shadow_stats import DetectionSummary, LatencySummary, ShadowReport, TensorSummary
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.policyfile import read_policies

GOOD = TensorSummary(samples=500, mean_abs_diff=1e-6, max_abs_diff=1e-5, mean_cosine=1.0, min_cosine=1.0,
                     top1_agreement=1.0)
POLICY = ShadowPolicy(min_samples=100)


def report(**fields: object) -> ShadowReport:
    values: dict[str, object] = {"compared": 500, "tensors": {"LOGITS": GOOD},
                                 "served_latency": LatencySummary(500, 1.0, 1.0, 2.0), "candidate_server_mean_ms": 1.1}
    values.update(fields)
    return ShadowReport("classifier", 2, **values)  # type: ignore[arg-type]


def test_close_outputs_pass() -> None:
    assert shadow_gate(report(), POLICY).outcome is Outcome.PASSED


def test_too_few_samples_is_inconclusive_never_a_pass() -> None:
    verdict = shadow_gate(report(compared=10), POLICY)
    assert verdict.outcome is Outcome.INCONCLUSIVE and not verdict.passed and "100" in verdict.reason


@pytest.mark.parametrize(("change", "metric"), [
    ({"mean_abs_diff": 0.5}, "mean_abs_diff"),
    ({"mean_cosine": 0.5}, "cosine"),
    ({"top1_agreement": 0.5}, "top1_agreement"),
    ({"candidate_nan": 3}, "nan_inf"),
])
def test_each_divergence_fails_naming_tensor_and_metric(change: dict[str, float], metric: str) -> None:
    verdict = shadow_gate(report(tensors={"LOGITS": replace(GOOD, **change)}), POLICY)  # type: ignore[arg-type]
    assert verdict.outcome is Outcome.FAILED and verdict.tensor == "LOGITS" and verdict.metric == metric
    assert "LOGITS" in verdict.reason and metric in verdict.reason


def test_divergence_fails_even_below_min_samples() -> None:
    verdict = shadow_gate(report(compared=5, tensors={"LOGITS": replace(GOOD, mean_cosine=0.1)}), POLICY)
    assert verdict.outcome is Outcome.FAILED


def test_slow_candidate_fails_on_latency_ratio() -> None:
    verdict = shadow_gate(report(candidate_server_mean_ms=3.0), POLICY)
    assert verdict.outcome is Outcome.FAILED and verdict.metric == "latency_ratio"


def test_a_ratio_within_the_slack_passes_and_a_negative_slack_is_refused() -> None:
    fast = LatencySummary(500, 0.45, 0.4, 1.0)  # sub-millisecond: the ratio is the idle candidate waking up
    assert shadow_gate(report(served_latency=fast, candidate_server_mean_ms=0.68), POLICY).passed
    strict = replace(POLICY, latency_slack_ms=0.0)
    assert shadow_gate(report(served_latency=fast, candidate_server_mean_ms=0.68), strict).metric == "latency_ratio"
    with pytest.raises(ValueError, match="latency_slack_ms"):
        ShadowPolicy(latency_slack_ms=-1.0)


def test_failed_run_fails() -> None:
    verdict = shadow_gate(report(phase="failed", reason="candidate timed out"), POLICY)
    assert verdict.outcome is Outcome.FAILED and "timed out" in verdict.reason


def test_policy_loads_from_the_shadow_section(tmp_path: Path) -> None:
    assert read_policies(tmp_path).shadow == ShadowPolicy()
    (tmp_path / "policy.yaml").write_text("promotion: {}\nshadow:\n  require: true\n  min_cosine: 0.99\n")
    assert read_policies(tmp_path).shadow == ShadowPolicy(require=True, min_cosine=0.99)
    (tmp_path / "policy.yaml").write_text("shadow:\n  min_cosin: 0.99\n")
    with pytest.raises(RepositoryCorrupt, match="min_cosin"):
        read_policies(tmp_path)


# --- a detector's report: judged by its detections ------------------------------------------------
AGREEING = DetectionSummary(frames=500, matched_share=0.95, count_diff=0.1, candidate_per_frame=3.4,
                            served_per_frame=3.5, candidate_class_shares={0: 0.5, 1: 0.5},
                            served_class_shares={0: 0.5, 1: 0.5})


def detector_report(**fields: object) -> ShadowReport:
    return report(tensors={}, detection=replace(AGREEING, **fields))  # type: ignore[arg-type]


def test_agreeing_detections_pass() -> None:
    assert shadow_gate(detector_report(), POLICY).outcome is Outcome.PASSED


@pytest.mark.parametrize(("change", "metric"), [
    ({"matched_share": 0.5}, "box_agreement"),
    ({"count_diff": 0.8}, "count_diff"),
    ({"candidate_nonfinite": 4}, "nan_inf"),
    ({"undecodable": 1}, "shape"),
])
def test_each_detection_divergence_fails_naming_the_metric(change: dict[str, float], metric: str) -> None:
    verdict = shadow_gate(detector_report(**change), POLICY)
    assert verdict.outcome is Outcome.FAILED and verdict.metric == metric and verdict.tensor == "detections"
    assert metric in verdict.reason


def test_detection_thresholds_come_from_the_policy(tmp_path: Path) -> None:
    loose = replace(POLICY, min_box_agreement=0.4, max_count_diff=1.0)
    assert shadow_gate(detector_report(matched_share=0.5, count_diff=0.8), loose).passed
    assert ShadowPolicy().min_box_agreement == 0.9 and ShadowPolicy().max_count_diff == 0.3
    (tmp_path / "policy.yaml").write_text("shadow:\n  min_box_agreement: 0.8\n  max_count_diff: 0.5\n")
    assert read_policies(tmp_path).shadow == ShadowPolicy(min_box_agreement=0.8, max_count_diff=0.5)
    for bad in ({"min_box_agreement": 1.5}, {"max_count_diff": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ShadowPolicy(**bad)  # type: ignore[arg-type]


def test_a_detector_with_few_frames_is_still_inconclusive_and_a_failed_run_still_fails() -> None:
    assert shadow_gate(detector_report(), replace(POLICY, min_samples=1000)).outcome is Outcome.INCONCLUSIVE
    assert shadow_gate(replace(detector_report(), phase="failed", reason="x"), POLICY).metric == "candidate"
