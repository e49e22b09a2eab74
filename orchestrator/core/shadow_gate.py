"""The shadow gate: a pure verdict over a report and a policy, and the promote-side check.

``<state>/<model>/policy.yaml``, every field optional:

    shadow:
      require: false            # promote refuses a version without a passed shadow run
      min_samples: 200          # fewer compared requests: inconclusive, never a pass
      max_mean_abs_diff: 1.0e-3 # per output tensor
      min_cosine: 0.999         # mean per-row cosine similarity, per output tensor
      min_top1_agreement: 0.99  # classifier-shaped outputs
      max_latency_ratio: 1.5    # candidate / served mean time inside Triton
      latency_slack_ms: 0.5     # ...failing only when the candidate is also this much slower

The slack is there because a candidate sees only the sampled requests: on a sub-millisecond
model the ratio then measures how long its idle backend takes to wake (measured on the CPU
sample: an identical candidate at 1 replay per 20 ms read 0.68 ms against production's
0.45 ms, 1.5x), not the model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.policy import POLICY_FILE, _build, _read
from orchestrator.core.shadow_stats import ShadowReport
from orchestrator.errors import PolicyViolation, RepositoryCorrupt
from orchestrator.store.repository import ModelStore

META_KEY = "shadow"  # VersionMeta.extra[META_KEY]: the last finished shadow run of that version


@dataclass(frozen=True)
class ShadowPolicy:
    min_samples: int = 200
    max_mean_abs_diff: float = 1.0e-3
    min_cosine: float = 0.999
    min_top1_agreement: float = 0.99
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 0.5
    require: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.min_samples < 1:
            problems.append("min_samples must be >= 1")
        if self.max_mean_abs_diff < 0:
            problems.append("max_mean_abs_diff must be >= 0")
        if not -1 <= self.min_cosine <= 1:
            problems.append("min_cosine must be within -1..1")
        if not 0 <= self.min_top1_agreement <= 1:
            problems.append("min_top1_agreement must be within 0..1")
        if self.max_latency_ratio <= 0:
            problems.append("max_latency_ratio must be > 0")
        if self.latency_slack_ms < 0:
            problems.append("latency_slack_ms must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


def load_shadow_policy(state_folder: Path) -> ShadowPolicy:
    path, raw = _read(state_folder)
    policy: ShadowPolicy = _build(ShadowPolicy, raw.get("shadow"), f"{path} shadow")
    return policy


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"  # too few samples: never treated as a pass


@dataclass(frozen=True)
class GateVerdict:
    outcome: Outcome
    reason: str
    tensor: str | None = None  # the first failed check, for the operator and the promote refusal
    metric: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED


def shadow_gate(report: ShadowReport, policy: ShadowPolicy) -> GateVerdict:
    """Failures first (a broken candidate fails whatever the count), then the sample count, then pass."""
    if report.phase == "failed":
        return GateVerdict(Outcome.FAILED, f"shadow run failed: {report.reason}", metric="candidate")
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
                return GateVerdict(Outcome.FAILED, f"tensor {name}: {metric}: {text}", name, metric)
    ratio = report.latency_ratio()
    slower_ms = (report.candidate_server_mean_ms or 0.0) - report.served_latency.mean_ms
    if (ratio is not None and ratio > policy.max_latency_ratio and slower_ms > policy.latency_slack_ms
            and report.compared >= policy.min_samples):
        return GateVerdict(Outcome.FAILED, f"latency_ratio: candidate {report.candidate_server_mean_ms:.2f} ms vs "
                                           f"served {report.served_latency.mean_ms:.2f} ms = {ratio:.2f} > "
                                           f"{policy.max_latency_ratio:g}, {slower_ms:.2f} ms slower (slack "
                                           f"{policy.latency_slack_ms:g} ms)", None, "latency_ratio")
    if report.compared < policy.min_samples:
        return GateVerdict(Outcome.INCONCLUSIVE, f"{report.compared} requests compared, the policy needs "
                                                 f"{policy.min_samples}", None, "samples")
    return GateVerdict(Outcome.PASSED, f"{report.compared} requests compared within the policy")


def shadow_record(report: ShadowReport, verdict: GateVerdict, finished_at: str) -> dict[str, Any]:
    """What goes under ``meta.yaml``'s ``shadow:`` key (the report is kept so a later policy can re-judge it)."""
    return {"outcome": verdict.outcome.value, "reason": verdict.reason, "tensor": verdict.tensor,
            "metric": verdict.metric, "finished_at": finished_at, "report": report.to_dict()}


def require_passed_shadow(store: ModelStore, version: int, policy: ShadowPolicy) -> None:
    """For promote: refuse ``version`` when the policy requires a passed shadow run and it has none.

    The stored report is judged again under today's policy, so tightening a threshold applies
    to runs recorded before the change.
    """
    if not policy.require:
        return
    recorded = store.meta(version).extra.get(META_KEY)
    where = f"{store.name} v{version}"
    hint = f"run `orchestrate shadow start {store.name} {version}` and `shadow stop` first"
    if not isinstance(recorded, dict) or not isinstance(recorded.get("report"), dict):
        raise PolicyViolation(f"{where} has no shadow run and the policy ({store.state / POLICY_FILE}) requires a "
                              f"passed one: {hint}")
    try:
        report = ShadowReport.from_dict(recorded["report"])
    except (TypeError, ValueError) as exc:
        raise RepositoryCorrupt(f"{where}: unreadable shadow record in meta.yaml: {exc}") from exc
    verdict = shadow_gate(report, policy)
    if not verdict.passed:
        raise PolicyViolation(f"{where} has no passed shadow run ({verdict.outcome.value}: {verdict.reason}); {hint}")
