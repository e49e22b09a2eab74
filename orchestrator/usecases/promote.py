"""Promote: verify a version beside production, then make it the served version.

Under the model's lock: repair, refuse what policy forbids before anything is touched, make room
for the candidate (``memory``), check it where it takes no traffic, mark it verified, then switch
(``executor``). A version whose last load failed is loaded again only with ``retry``.
"""

from __future__ import annotations

import logging

from orchestrator import faults
from orchestrator.core.journal import Action, Result, new_op_id, now_iso
from orchestrator.core.model import Verification, VersionStatus
from orchestrator.core.policy import ShadowPolicy
from orchestrator.core.shadow_gate import recorded_verdict
from orchestrator.delivery.plan_compat import plan_incompatibility
from orchestrator.errors import CandidateRejected, OrchestratorError, PolicyViolation, RepositoryCorrupt
from orchestrator.store.golden import load_golden
from orchestrator.store.modelconfig import to_json
from orchestrator.store.policyfile import POLICY_FILE
from orchestrator.store.repository import ModelStore
from orchestrator.store.shadow_state import refuse_while_shadowing
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases import executor
from orchestrator.usecases.candidate import check_candidate, reject, require_judgeable
from orchestrator.usecases.context import Context, SwitchResult
from orchestrator.usecases.labels import carry
from orchestrator.usecases.memory import make_room
from orchestrator.usecases.reconcile import settle
from orchestrator.usecases.repair import repair

log = logging.getLogger(__name__)


def promote(ctx: Context, model: str | None, version: int, force: bool = False, retry: bool = False
            ) -> SwitchResult:
    store = ctx.store(model)
    with ctx.locked(store):
        snap = repair(ctx, store).snapshot
        snap.require(version)
        refuse_while_shadowing(store)  # the candidate entry is the shadow's until it stops
        served = snap.served
        if snap.status(version) is VersionStatus.QUARANTINED and not force:
            raise PolicyViolation(f"{store.name} v{version} is quarantined "
                                  f"({snap.attestation(version).verification.reason or 'rolled back by the watcher'}); "
                                  f"promote it with --force if you are sure")
        if version == served:
            return settle(ctx, store, snap, version, Action.PROMOTE)
        require_loadable(snap, version, retry)
        # A broken policy, meta or golden set stops us before anything is touched.
        policy = snap.policies.promotion
        incompatible = plan_incompatibility(snap.config, snap.meta(version), snap.require(version), ctx.settings)
        if incompatible:
            raise PolicyViolation(f"{store.name} v{version} cannot run on this server: {incompatible}")
        require_passed_shadow(snap, version, snap.policies.shadow)
        golden = load_golden(store.state / policy.golden, snap.client_contract)
        if golden is None:
            raise PolicyViolation(f"{store.name} has no golden set in {store.state / policy.golden}: "
                                  f"a candidate cannot be verified without one")
        require_judgeable(golden, snap.client_outputs, f"{store.name} v{version}")
        ctx.triton.require_live()
        op = new_op_id()
        started = ctx.clock()
        snap = ctx.record(store, snap, Action.PROMOTE, Result.STARTED, op, from_version=served, to_version=version,
                          details={"resident_before": list(snap.resident)})
        unloaded: frozenset[int] = frozenset()
        try:
            ctx.progress("checking memory")
            snap, unloaded = make_room(ctx, store, snap, version, op)
            checked = check_candidate(ctx, store, snap, version, op, policy, golden)
        except CandidateRejected:
            reload_fallbacks(ctx, store, unloaded)
            raise
        except (OrchestratorError, OSError) as exc:
            # Not the candidate's fault (Triton went away, a file is unreadable): serving untouched.
            ctx.record(store, snap, Action.PROMOTE, Result.FAILED, op, from_version=served, to_version=version,
                       reason=str(exc))
            reload_fallbacks(ctx, store, unloaded)
            raise
        verdict, snap = checked.verdict, checked.snapshot
        try:
            snap = store.record_verification(snap, version, Verification(
                status=VersionStatus.VERIFIED, verified_by=ctx.settings.actor, verified_at=now_iso(),
                golden=verdict.metrics), footprint_bytes=checked.footprint_bytes)
            snap = ctx.record(store, snap, Action.PROMOTE, Result.STEP, op, to_version=version,
                              details={"step": "verified", "metrics": verdict.metrics})
            faults.checkpoint("promote:verified")

            def rejected(after: ModelSnapshot, reason: str) -> None:
                reject(ctx, store, store.record_load(after, version, failed=True), version, op, reason)

            ctx.progress(f"switching {store.name} to v{version}")
            snap, switched_at = executor.switch(ctx, store, snap, version, op, Action.PROMOTE, exclude=set(unloaded),
                                                reject=rejected)
        except OSError as exc:
            executor.close_if_nothing_switched(ctx, store, Action.PROMOTE, op, served, version, exc)
            raise
        duration, switch_ms = ctx.ms_since(started), round((switched_at - started) * 1000.0, 2)
        ctx.record(store, snap, Action.PROMOTE, Result.SUCCEEDED, op, from_version=served, to_version=version,
                   duration_ms=duration, details={"resident": list(snap.resident), "metrics": verdict.metrics,
                                                  "switch_ms": switch_ms, **carry(ctx, store, snap)})
        return SwitchResult(store.name, "promote", served, version, snap.resident, duration, True, verdict.metrics,
                            switch_ms)


def reload_fallbacks(ctx: Context, store: ModelStore, unloaded: frozenset[int]) -> None:
    """The fallbacks unloaded to make room, loaded again after a promote that did not switch (the candidate is
    gone): the served version keeps its instant rollback. Best effort: the original error is the one to report."""
    if not unloaded:
        return
    try:
        snap = store.snapshot()
        snap = store.write_resident(snap, tuple(sorted(set(snap.resident) | unloaded)))
        ctx.triton.load(store.name, to_json(snap.config))
        ctx.record(store, snap, Action.RECONCILE, Result.SUCCEEDED, new_op_id(), to_version=snap.served,
                   reason=f"fallback {', '.join(f'v{v}' for v in sorted(unloaded))} loaded again after the promote "
                          f"that unloaded it did not switch")
    except (OrchestratorError, OSError) as exc:
        log.error("%s: could not load fallback %s again (%s); `orchestrate reconcile` or the next switch will",
                  store.name, sorted(unloaded), exc)


def require_loadable(snap: ModelSnapshot, version: int, retry: bool) -> None:
    """A version whose last load failed is not loaded again unless asked: a broken plan can leak device
    memory on every failed load."""
    failures = snap.attestation(version).load_failures
    if failures and not retry:
        reason = snap.attestation(version).verification.reason or "load failed"
        raise PolicyViolation(f"{snap.name} v{version} failed to load ({reason}); a broken engine can leak device "
                              f"memory on every failed load: fix the package, or promote it again with --retry")


def require_passed_shadow(snap: ModelSnapshot, version: int, policy: ShadowPolicy) -> None:
    """Refuse ``version`` when the policy requires a passed shadow run and it has none.

    The stored report is judged again under today's policy, so tightening a threshold applies
    to runs recorded before the change.
    """
    if not policy.require:
        return
    where = f"{snap.name} v{version}"
    hint = f"run `orchestrate shadow start {snap.name} {version}` and `shadow stop` first"
    try:
        verdict = recorded_verdict(snap.attestation(version).shadow, policy)
    except ValueError as exc:
        raise RepositoryCorrupt(f"{where}: {exc} in its attestation") from exc
    if verdict is None:
        raise PolicyViolation(f"{where} has no shadow run and the policy ({snap.state / POLICY_FILE}) requires a "
                              f"passed one: {hint}")
    if not verdict.passed:
        raise PolicyViolation(f"{where} has no passed shadow run ({verdict.outcome.value}: {verdict.reason}); {hint}")
