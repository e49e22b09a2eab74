"""A candidate under test: loaded as ``<model>__candidate`` (no production traffic), warmed up,
judged on the golden set against the served version, then unloaded either way.

Nothing waits for the candidate's unload: its verdict goes into the state folder's attestation,
not into the version folder, and its entry is a separate model. The next candidate load waits
instead, in the rare case the previous one is still on its way out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from orchestrator import faults
from orchestrator.core.checks import compare_scores, sanity, top1_accuracy
from orchestrator.core.golden import GoldenSet
from orchestrator.core.journal import Action, Result, now_iso
from orchestrator.core.model import Verification, VersionStatus
from orchestrator.core.policy import PromotionPolicy
from orchestrator.core.verdict import Verdict
from orchestrator.errors import CandidateRejected, LoadFailed, TritonError, TritonUnreachable
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.golden import run_golden
from orchestrator.usecases.candidate_entry import await_previous, drop_candidate
from orchestrator.usecases.context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateResult:
    verdict: Verdict
    footprint_bytes: int | None  # memory the device lost while the candidate loaded (None: not measured)
    snapshot: ModelSnapshot


def check_candidate(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, op: str,
                    policy: PromotionPolicy, golden: GoldenSet) -> CandidateResult:
    """The candidate's verdict; a failed check raises CandidateRejected after marking it failed."""
    config = snap.config
    outputs = snap.outputs
    batch = min(policy.batch_size, config.max_batch_size) if config.max_batch_size else policy.batch_size
    entry = candidate_name(store.name)
    await_previous(ctx, entry)
    try:
        _, candidate_config = store.write_candidate_entry(snap, version)
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
        snap = ctx.record(store, snap, Action.PROMOTE, Result.STEP, op, to_version=version,
                          details={"step": "candidate_loaded", "footprint_bytes": footprint})
        faults.checkpoint("promote:candidate_loaded")
        try:
            warmups = golden.batches(batch)[: policy.warmup_requests]
            ctx.progress(f"warming up ({len(warmups)} requests)")
            for warm in warmups:
                ctx.triton.infer(entry, warm, outputs)
            ctx.progress(f"golden set on v{version} ({golden.size} samples)")
            results = run_golden(ctx.triton, entry, None, golden, outputs, batch)
        except TritonUnreachable:
            raise  # the server went away: not the candidate's fault, it stays unverified
        except TritonError as exc:  # the candidate's backend answered with an error
            reject(ctx, store, snap, version, op, f"inference failed: {exc}")
        verdict = sanity(results, policy.output_bound)
        if not verdict.passed:
            reject(ctx, store, snap, version, op, f"bad outputs on the golden set: {verdict.reason}")
        if golden.labels is None:
            return CandidateResult(Verdict.of(True), footprint, snap)
        score = top1_accuracy(results[outputs[0]], golden.labels)
        served_score = None
        if snap.served is not None:
            ctx.progress(f"golden set on served v{snap.served}")
            served_results = run_golden(ctx.triton, store.name, snap.served, golden, outputs, batch)
            served_score = top1_accuracy(served_results[outputs[0]], golden.labels)
        verdict = compare_scores(score, served_score, policy)
        if not verdict.passed:
            reject(ctx, store, snap, version, op, verdict.reason, verdict.metrics)
        return CandidateResult(verdict, footprint, snap)
    finally:
        drop_candidate(ctx, store, wait=False)


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
