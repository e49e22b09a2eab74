"""Pure judgements on a candidate's outputs: no server, no files.

A check returns a ``Verdict``; a failed check is a value, not an exception.
"""

from __future__ import annotations

import numpy as np

from orchestrator.core.detection import MapReport
from orchestrator.core.policy import PromotionPolicy
from orchestrator.core.verdict import Verdict


def output_problems(name: str, values: np.ndarray, bound: float, zeros_ok: bool = False) -> list[str]:
    """What is wrong with one output tensor: NaN, Inf, all zeros (unless ``zeros_ok``: a detector's padded
    outputs are all zeros on frames without objects), values beyond ``bound``."""
    problems = []
    if values.dtype.kind not in "fiu":
        return problems
    as_float = values.astype(np.float64, copy=False)
    nan = int(np.isnan(as_float).sum())
    inf = int(np.isinf(as_float).sum())
    if nan:
        problems.append(f"{name} has {nan} NaN of {values.size}")
    if inf:
        problems.append(f"{name} has {inf} Inf of {values.size}")
    finite = as_float[np.isfinite(as_float)]
    if values.size and not zeros_ok and not np.any(as_float):
        problems.append(f"{name} is all zeros")
    elif finite.size and float(np.abs(finite).max()) > bound:
        problems.append(f"{name} explodes: max |x| {float(np.abs(finite).max()):.3g} > bound {bound:.3g}")
    return problems


def sanity(outputs: dict[str, np.ndarray], bound: float, zeros_ok: bool = False) -> Verdict:
    problems = [p for name, values in sorted(outputs.items()) for p in output_problems(name, values, bound, zeros_ok)]
    return Verdict.of(not problems, "; ".join(problems))


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} outputs for {labels.shape[0]} labels")
    return float((np.argmax(logits.reshape(len(labels), -1), axis=1) == labels).mean())


def compare_scores(candidate: float, served: float | None, policy: PromotionPolicy) -> Verdict:
    """Golden-set accuracy of the candidate against the served version and the policy floor."""
    metrics = {"accuracy": candidate}
    if served is not None:
        metrics["served_accuracy"] = served
    if candidate < policy.min_score:
        return Verdict.of(False, f"golden accuracy {candidate:.3f} below the minimum {policy.min_score:.3f}", metrics)
    if served is not None and candidate < served - policy.max_score_drop - 1e-9:
        return Verdict.of(
            False,
            f"golden accuracy {candidate:.3f} is worse than the served version's {served:.3f} "
            f"(allowed drop {policy.max_score_drop:.3f})",
            metrics,
        )
    return Verdict.of(True, "", metrics)


def compare_maps(candidate: MapReport, served: MapReport | None, policy: PromotionPolicy) -> Verdict:
    """A detector's golden-set mAP against the served version's and the policy floor (``map_metric``)."""
    metric = policy.map_metric
    metrics = candidate.as_metrics() | (served.as_metrics("served_") if served is not None else {})
    value = getattr(candidate, metric)
    if candidate.truths and not candidate.detections:
        return Verdict.of(False, f"no detections on the golden set ({candidate.truths} objects to find)", metrics)
    if value < policy.min_map:
        return Verdict.of(False, f"golden {metric} {value:.3f} below the minimum {policy.min_map:.3f}", metrics)
    if served is not None and value < getattr(served, metric) - policy.max_map_drop - 1e-9:
        before = getattr(served, metric)
        worst = _worst_class(candidate, served)
        return Verdict.of(False, f"golden {metric} {value:.3f} is {(before - value) * 100:.1f} points below the "
                          f"served version's {before:.3f} (allowed drop {policy.max_map_drop * 100:.1f}){worst}",
                          metrics)
    return Verdict.of(True, "", metrics)


def _worst_class(candidate: MapReport, served: MapReport) -> str:
    drops = {c: served.per_class50[c] - ap for c, ap in candidate.per_class50.items() if c in served.per_class50}
    if not drops:
        return ""
    cls = max(drops, key=lambda c: drops[c])
    if drops[cls] <= 0:
        return ""
    return f"; worst class {cls}: AP50 {candidate.per_class50[cls]:.2f} against {served.per_class50[cls]:.2f}"
