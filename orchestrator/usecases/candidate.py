"""A candidate under test: loaded as ``<model>__candidate`` (no production traffic), warmed up,
judged on the golden set against the served version, then unloaded either way.

Nothing waits for the candidate's unload: its verdict goes into the state folder's attestation,
not into the version folder, and its entry is a separate model. The next candidate load waits
instead, in the rare case the previous one is still on its way out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from orchestrator import faults
from orchestrator.core.checks import compare_maps, compare_scores, sanity, top1_accuracy
from orchestrator.core.detection import Boxes, DetectionOutputs, decode, mean_average_precision
from orchestrator.core.golden import GoldenSet
from orchestrator.core.journal import Action, Result, now_iso
from orchestrator.core.model import Verification, VersionStatus
from orchestrator.core.policy import PromotionPolicy
from orchestrator.core.replay_gate import with_replay
from orchestrator.core.verdict import Verdict
from orchestrator.errors import CandidateRejected, LoadFailed, PolicyViolation, TritonError, TritonUnreachable
from orchestrator.store.golden import TRUTH_FILE
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.golden import run_golden
from orchestrator.usecases.candidate_entry import await_previous, drop_candidate
from orchestrator.usecases.context import Context
from orchestrator.usecases.replay import replay_verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateResult:
    verdict: Verdict
    footprint_bytes: int | None  # memory the device lost while the candidate loaded (None: not measured)
    snapshot: ModelSnapshot


def check_candidate(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, op: str,
                    policy: PromotionPolicy, golden: GoldenSet) -> CandidateResult:
    """The candidate's verdict; a failed check raises CandidateRejected after marking it failed.

    A model clients reach through an ensemble is judged through a copy of that ensemble whose step
    points at the candidate entry: the same pre-processing and NMS as production."""
    config = snap.config
    route = snap.route
    outputs = snap.client_outputs
    batch = min(policy.batch_size, config.max_batch_size) if config.max_batch_size else policy.batch_size
    entry = candidate_name(store.name)
    await_previous(ctx, entry)
    try:
        _, candidate_config = store.write_candidate_entry(snap, version)
        target, route_config = entry, None
        if route is not None:
            target, route_config = store.write_candidate_route(route)
        faults.checkpoint("promote:candidate_entry")
        ctx.progress(f"loading v{version} as {entry}")
        before = ctx.mem_available()
        try:
            ctx.triton.load(entry, to_json(candidate_config))
        except LoadFailed as exc:
            snap = store.record_load(snap, version, failed=True)
            reject(ctx, store, snap, version, op, f"load failed: {exc.reason}")
        after = ctx.mem_available()
        footprint = max(0, before - after) if before is not None and after is not None else None
        if snap.attestation(version).load_failures:
            snap = store.record_load(snap, version, failed=False)  # loaded after --retry
        if route is not None and route_config is not None:
            ctx.progress(f"loading {target}: the {route.name} ensemble through v{version}")
            try:
                ctx.triton.load(target, to_json(route_config))
            except LoadFailed as exc:  # the version loaded but does not fit the pipeline (tensor names, shapes)
                reject(ctx, store, snap, version, op, f"the {route.name} ensemble does not load with it: {exc.reason}")
        snap = ctx.record(store, snap, Action.PROMOTE, Result.STEP, op, to_version=version,
                          details={"step": "candidate_loaded", "footprint_bytes": footprint,
                                   **({"route": route.name} if route is not None else {})})
        faults.checkpoint("promote:candidate_loaded")
        try:
            warmups = golden.batches(batch)[: policy.warmup_requests]
            ctx.progress(f"warming up ({len(warmups)} requests)")
            for warm in warmups:
                ctx.triton.infer(target, warm, outputs)
            ctx.progress(f"golden set on v{version} ({golden.size} samples{' through ' + route.name if route else ''})")
            results = run_golden(ctx.triton, target, None, golden, outputs, batch)
        except TritonUnreachable:
            raise  # the server went away: not the candidate's fault, it stays unverified
        except TritonError as exc:  # the candidate's backend answered with an error
            reject(ctx, store, snap, version, op, f"inference failed: {exc}")
        verdict = sanity(results, policy.output_bound, zeros_ok=golden.detects)
        if not verdict.passed:
            reject(ctx, store, snap, version, op, f"bad outputs on the golden set: {verdict.reason}")
        if golden.labels is None and golden.truths is None:
            return CandidateResult(Verdict.of(True), footprint, snap)
        served_results = None
        if snap.served is not None:
            ctx.progress(f"golden set on served v{snap.served}")
            # Through the production route: it follows the served version (the candidate is in its own entry).
            served_results = run_golden(ctx.triton, route.name if route else store.name,
                                        None if route else snap.served, golden, outputs, batch)
        if golden.truths is not None:
            verdict = judge_detections(results, served_results, golden.truths, policy)
        else:
            assert golden.labels is not None
            score = top1_accuracy(results[outputs[0]], golden.labels)
            served_score = top1_accuracy(served_results[outputs[0]], golden.labels) \
                if served_results is not None else None
            verdict = compare_scores(score, served_score, policy)
        if not verdict.passed:
            reject(ctx, store, snap, version, op, verdict.reason, verdict.metrics)
        replay = replay_verdict(ctx, store, snap, target, route.name if route else store.name,
                                None if route else snap.served, snap.policies.replay, outputs, golden)
        if replay is not None:  # recorded production inputs (usecases/replay.py); None when replay is off
            verdict = with_replay(verdict, replay)
            if not verdict.passed:
                reject(ctx, store, snap, version, op, verdict.reason, verdict.metrics)
        return CandidateResult(verdict, footprint, snap)
    finally:
        drop_candidate(ctx, store, wait=False)


def judge_detections(results: dict[str, np.ndarray], served: dict[str, np.ndarray] | None,
                     truths: tuple[Boxes, ...], policy: PromotionPolicy) -> Verdict:
    """mAP of the candidate's detections against the served version's (``max_map_drop``)."""
    try:
        candidate = mean_average_precision(decode(results), truths)
        reference = mean_average_precision(decode(served), truths) if served is not None else None
    except ValueError as exc:
        return Verdict.of(False, f"outputs are not detections: {exc}")
    return compare_maps(candidate, reference, policy)


def require_judgeable(golden: GoldenSet, outputs: list[str], where: str) -> None:
    """A detector's golden set needs the padded detection outputs: refused before anything is loaded."""
    if golden.truths is None:
        return
    missing = [name for name in DetectionOutputs().names() if name not in outputs]
    if missing:
        raise PolicyViolation(f"{where}: the golden set has {TRUTH_FILE} (a detector's) but the route answers "
                              f"{', '.join(outputs)}, not {', '.join(missing)}")


def reject(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, op: str, reason: str,
           metrics: dict[str, float] | None = None) -> None:
    """Mark ``version`` failed, journal why, and raise CandidateRejected: serving was never touched."""
    drop_candidate(ctx, store)
    snap = store.record_verification(snap, version, Verification(
        status=VersionStatus.FAILED, verified_by=ctx.settings.actor, verified_at=now_iso(), golden=metrics or {},
        reason=reason))
    ctx.record(store, snap, Action.PROMOTE, Result.FAILED, op, from_version=snap.served, to_version=version,
               reason=reason, details={"metrics": metrics or {}})
    raise CandidateRejected(store.name, version, reason)
