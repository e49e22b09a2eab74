"""The switch executor: apply a plan's policies one by one, each leaving a version serving.

``core.switch.plan_switch`` decides the steps; this writes each policy, loads it into Triton,
and on a failed load puts the last good policy back. It also brings Triton in line with the
disk when they differ (``sync_triton``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator import faults
from orchestrator.core.journal import Action, Result, new_op_id
from orchestrator.core.labels import pinned
from orchestrator.core.model import VersionStatus
from orchestrator.core.switch import SwitchPlan, plan_switch
from orchestrator.core.versions import label
from orchestrator.errors import LoadFailed, RepositoryCorrupt, TritonError, TritonUnreachable
from orchestrator.store.labels import read_labels
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import TritonState
from orchestrator.usecases.context import Context

log = logging.getLogger(__name__)


def plan(snap: ModelSnapshot, target: int, exclude: set[int]) -> SwitchPlan:
    keep = snap.policies.promotion.keep_resident
    # Fallbacks stay resident only below the target (the highest loaded version serves).
    above = {v for v in snap.versions if v >= target}
    return plan_switch(snap.resident, target, snap.fallbacks(exclude | above, limit=keep), keep,
                       pinned=labelled(snap) - exclude - above)


def labelled(snap: ModelSnapshot) -> set[int]:
    """Verified versions a label (other than ``stable``) points at: they stay loaded through a switch. An
    unreadable labels file pins nothing: it must not stop a rollback."""
    try:
        pins = pinned(read_labels(snap.state))
    except RepositoryCorrupt as exc:
        log.warning("%s: %s; no version is kept loaded for a label", snap.name, exc)
        return set()
    return {v for v in pins if v in snap.versions and snap.status(v) is VersionStatus.VERIFIED}


def switch(ctx: Context, store: ModelStore, snap: ModelSnapshot, target: int, op: str, action: Action,
           exclude: set[int], reject: Callable[[ModelSnapshot, str], None] | None = None,
           ) -> tuple[ModelSnapshot, float]:
    """Serve ``target``; returns the snapshot after the final policy and the clock time the target served.

    On a failed load the previous policy is restored; ``reject`` (promote) is told when that
    happened before the target served, otherwise the operation is journaled failed.
    """
    steps = plan(snap, target, exclude)
    switched_at = ctx.clock()
    previous = snap.resident
    for index, versions in enumerate(steps.steps):
        snap = store.write_resident(snap, versions)
        faults.checkpoint(f"{action.value}:policy_written")
        try:
            ctx.triton.load(store.name, to_json(snap.config))
        except LoadFailed as exc:
            snap = store.write_resident(snap, previous)
            ctx.triton.load(store.name, to_json(snap.config))
            reason = f"load of {label(target)} into {store.name} failed: {exc.reason}"
            if reject is not None and index <= steps.switch_step:
                reject(snap, reason)
            ctx.record(store, snap, action, Result.FAILED, op, to_version=target, reason=reason)
            raise
        faults.checkpoint(f"{action.value}:loaded")
        if index == steps.switch_step:
            switched_at = ctx.clock()
            confirm_serving(ctx, store.name, target)
            snap = ctx.record(store, snap, action, Result.STEP, op, to_version=target,
                              details={"step": "switched", "resident": list(versions)})
        previous = versions
    return snap, switched_at


def confirm_serving(ctx: Context, model: str, target: int) -> None:
    ready = sorted(v for v, e in ctx.triton.states(model).items() if e.state is TritonState.READY)
    if not ready or max(ready) != target:
        raise TritonError(f"{model}: expected v{target} to serve, Triton has READY {ready}")


def sync_triton(ctx: Context, store: ModelStore, snap: ModelSnapshot, strict: bool = False) -> list[str]:
    """Load the on-disk policy into Triton when what Triton holds differs from it."""
    try:
        states = ctx.triton.states(store.name)
    except TritonUnreachable:
        if strict:
            raise
        return []
    want = set(snap.resident)
    ready = {v for v, e in states.items() if e.state is TritonState.READY}
    if ready == want:
        return []
    started = ctx.clock()
    op = new_op_id()
    served_before = max(ready) if ready else None
    try:
        ctx.triton.load(store.name, to_json(snap.config))
    except LoadFailed as exc:
        ctx.record(store, snap, Action.RECONCILE, Result.FAILED, op, from_version=served_before,
                   to_version=snap.served, reason=exc.reason)
        raise
    ctx.record(store, snap, Action.RECONCILE, Result.SUCCEEDED, op, from_version=served_before,
               to_version=snap.served, reason=f"Triton held {sorted(ready)}, disk says {sorted(want)}",
               duration_ms=ctx.ms_since(started))
    return [f"loaded {sorted(want)} into Triton (it held {sorted(ready)})"]


def close_if_nothing_switched(ctx: Context, store: ModelStore, action: Action, op: str, served: int | None,
                              target: int, exc: OSError) -> None:
    """A write failed (disk full): close the operation as failed if the disk still serves ``served``;
    otherwise leave it open so the next command completes the switch it had started."""
    snap = store.snapshot()  # after a failed write, only the disk knows what landed
    if snap.served == served:
        ctx.record(store, snap, action, Result.FAILED, op, from_version=served, to_version=target,
                   reason=f"write failed: {exc}")
