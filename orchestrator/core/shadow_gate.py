"""The shadow gate: a pure verdict over a shadow run's report and the ``shadow:`` policy.

Failures first (a broken candidate fails whatever the count), then the sample count, then
pass; too few compared requests are inconclusive, never a pass. Thresholds and their
defaults are in ``core/policy.py`` (``ShadowPolicy``). A detector's report is judged by its
detections (box agreement, count difference) where a classifier's is judged per tensor.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.policy import ShadowPolicy
from orchestrator.core.shadow_stats import DetectionSummary, ShadowPhase, ShadowReport
from orchestrator.core.verdict import Outcome, Verdict

META_KEY = "shadow"  # where a meta.yaml from before attestations recorded its last finished shadow run


def shadow_gate(report: ShadowReport, policy: ShadowPolicy) -> Verdict:
    """Failures first (a broken candidate fails whatever the count), then the sample count, then pass."""
    if report.phase == ShadowPhase.FAILED:
        return Verdict(Outcome.FAILED, f"shadow run failed: {report.reason}", metric="candidate")
    for name, t in sorted(report.tensors.items()):
        checks: list[tuple[str, bool, str]] = [
            ("nan_inf", t.candidate_nan + t.candidate_inf > t.served_nan + t.served_inf,
             f"{t.candidate_nan} NaN and {t.candidate_inf} Inf in the candidate's outputs, "
             f"{t.served_nan + t.served_inf} in production's"),
            ("shape", t.shape_mismatches > 0, f"{t.shape_mismatches} responses with another shape"),
            ("mean_abs_diff", t.mean_abs_diff > policy.max_mean_abs_diff,
             f"mean absolute difference {t.mean_abs_diff:.3g} > {policy.max_mean_abs_diff:g}"),
            ("cosine", t.mean_cosine < policy.min_cosine,
             f"mean cosine similarity {t.mean_cosine:.4f} < {policy.min_cosine:g}"),
            ("top1_agreement", t.top1_agreement is not None and t.top1_agreement < policy.min_top1_agreement,
             f"top-1 agreement {t.top1_agreement or 0:.3f} < {policy.min_top1_agreement:g}"),
        ]
        for metric, failed, text in checks:
            if failed and t.samples + t.shape_mismatches > 0:
                return Verdict(Outcome.FAILED, f"tensor {name}: {metric}: {text}", name, metric)
    if report.detection is not None:
        failed_detection = _detection_failure(report.detection, policy)
        if failed_detection is not None:
            return failed_detection
    ratio = report.latency_ratio()
    slower_ms = (report.candidate_server_mean_ms or 0.0) - report.served_latency.mean_ms
    if (ratio is not None and ratio > policy.max_latency_ratio and slower_ms > policy.latency_slack_ms
            and report.compared >= policy.min_samples):
        return Verdict(Outcome.FAILED, f"latency_ratio: candidate {report.candidate_server_mean_ms:.2f} ms vs "
                                           f"served {report.served_latency.mean_ms:.2f} ms = {ratio:.2f} > "
                                           f"{policy.max_latency_ratio:g}, {slower_ms:.2f} ms slower (slack "
                                           f"{policy.latency_slack_ms:g} ms)", None, "latency_ratio")
    if report.compared < policy.min_samples:
        return Verdict(Outcome.INCONCLUSIVE, f"{report.compared} requests compared, the policy needs "
                                                 f"{policy.min_samples}", None, "samples")
    return Verdict(Outcome.PASSED, f"{report.compared} requests compared within the policy")


def _detection_failure(d: DetectionSummary, policy: ShadowPolicy) -> Verdict | None:
    checks: list[tuple[str, bool, str]] = [
        ("shape", d.undecodable > 0, f"{d.undecodable} responses are not detections"),
        ("nan_inf", d.candidate_nonfinite > d.served_nonfinite,
         f"{d.candidate_nonfinite} boxes with NaN or Inf in the candidate's detections, {d.served_nonfinite} in "
         f"production's"),
        ("box_agreement", d.matched_share < policy.min_box_agreement,
         f"{d.matched_share:.3f} of boxes match production's (IoU 0.5, same class) < {policy.min_box_agreement:g}"),
        ("count_diff", d.count_diff > policy.max_count_diff,
         f"{d.count_diff:.2f} boxes per frame apart (candidate {d.candidate_per_frame:.2f}, production "
         f"{d.served_per_frame:.2f}) > {policy.max_count_diff:g}"),
    ]
    for metric, failed, text in checks:
        if failed and d.frames + d.undecodable > 0:
            return Verdict(Outcome.FAILED, f"detections: {metric}: {text}", "detections", metric)
    return None


def shadow_record(report: ShadowReport, verdict: Verdict, finished_at: str) -> dict[str, Any]:
    """What goes under ``meta.yaml``'s ``shadow:`` key (the report is kept so a later policy can re-judge it)."""
    return {"outcome": verdict.outcome.value, "reason": verdict.reason, "tensor": verdict.tensor,
            "metric": verdict.metric, "finished_at": finished_at, "report": report.to_dict()}


def recorded_verdict(recorded: object, policy: ShadowPolicy) -> Verdict | None:
    """A stored shadow record judged again under today's policy; None when there is none.

    So tightening a threshold applies to runs recorded before the change. ValueError: the
    record is unreadable.
    """
    if not isinstance(recorded, dict) or not isinstance(recorded.get("report"), dict):
        return None
    try:
        report = ShadowReport.from_dict(recorded["report"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"unreadable shadow record: {exc}") from exc
    return shadow_gate(report, policy)


__all__ = ["META_KEY", "Outcome", "ShadowPolicy", "Verdict", "recorded_verdict", "shadow_gate",
           "shadow_record"]
