"""Repair: finish or undo what an interrupted command left behind (disk first, then Triton), then make sure
config.pbtxt lets Triton load no version that may not serve (``usecases/residency.py``).

Every mutating command runs this first, under the model's lock. The decisions are pure
(``core.repair.decide_repair``, ``core.residency.guard_resident``); this module reads what they need
and applies them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from orchestrator.core.journal import Action, Record, Result, now_iso
from orchestrator.core.model import Verification
from orchestrator.core.repair import RepairDecision, RepairKind, decide_repair
from orchestrator.core.residency import ResidencyDecision
from orchestrator.core.switch import status_after_rollback
from orchestrator.core.versions import label
from orchestrator.store.repository import ModelStore, remove_tree
from orchestrator.store.shadow_state import active_shadow
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases import executor
from orchestrator.usecases.candidate_entry import drop_candidate
from orchestrator.usecases.context import Context
from orchestrator.usecases.residency import guard_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repaired:
    snapshot: ModelSnapshot  # what the disk holds after the repair
    notes: list[str] = field(default_factory=list)
    decision: RepairDecision | None = None  # the interrupted operation, when there was one
    residency: ResidencyDecision | None = None  # the guard's rewrite of config.pbtxt, when there was one


def repair(ctx: Context, store: ModelStore) -> Repaired:
    """Run under the model's lock; returns the snapshot to carry on with. UnverifiedResident when config.pbtxt
    makes Triton load only versions that may not serve (nothing written or loaded)."""
    notes = []
    for leftover in store.staging_leftovers():
        remove_tree(leftover)
        notes.append(f"removed unfinished import staging {leftover.name}")
    notes += store.finish_prunes()  # an interrupted prune: the rest of its folder deleted, or the version kept
    snap = store.snapshot()
    decision = None
    unfinished = snap.journal.unfinished()
    if unfinished is not None:
        decision = _decide(snap, unfinished)
        snap, note = _apply(ctx, store, snap, decision)
        notes.append(note)
    elif store.has_candidate_entry() and active_shadow(store) is None:
        drop_candidate(ctx, store, quiet=True)
        notes.append("removed a leftover candidate entry")
    try:
        # After the interrupted operation: a completed rollback --force is journal-served by now.
        guarded = guard_config(ctx, store, snap)
    finally:
        _log(store, notes)
    snap = guarded.snapshot
    if guarded.note:
        notes.append(guarded.note)
        _log(store, [guarded.note])
    if guarded.rewrite is not None or (unfinished is not None and unfinished.action.switches):
        # When Triton is up; otherwise the next contact does. After a rewrite it unloads what a restart let in.
        synced = executor.sync_triton(ctx, store, snap)
        _log(store, synced)
        notes += synced
    return Repaired(snap, notes, decision, guarded.rewrite)


def _log(store: ModelStore, notes: list[str]) -> None:
    for note in notes:
        log.warning("%s: %s", store.name, note)


def _decide(snap: ModelSnapshot, started: Record) -> RepairDecision:
    target = started.to_version
    filed = target is not None and (snap.folder / str(target)).is_dir()
    status = snap.statuses().get(target) if target is not None and target in snap.versions else None
    return decide_repair(started, filed=filed, served=snap.served, target_status=status, resident=snap.resident)


def _apply(ctx: Context, store: ModelStore, snap: ModelSnapshot, decision: RepairDecision) -> tuple[ModelSnapshot, str]:
    started = decision.started
    op, action, target = started.op, started.action, started.to_version
    if decision.kind is RepairKind.IMPORT_FILED:
        snap = ctx.record(store, snap, action, Result.REPAIRED, op, to_version=target,
                          reason="filed before the interruption")
        return snap, f"import of v{target} had completed"
    if decision.kind is RepairKind.IMPORT_LOST:
        snap = ctx.record(store, snap, action, Result.ABORTED, op, to_version=target,
                          reason="interrupted before filing")
        return snap, "an interrupted import left nothing behind"
    if decision.kind is RepairKind.CLOSE:
        snap = ctx.record(store, snap, action, Result.ABORTED, op, reason="interrupted; nothing to repair")
        return snap, f"closed an interrupted {action.value}"
    assert target is not None
    drop_candidate(ctx, store, quiet=True)
    if decision.kind is RepairKind.COMPLETE_SWITCH:
        # The switch itself was written: finish it (fallbacks may still be missing).
        exclude = {started.from_version} if action is Action.ROLLBACK and started.from_version is not None else set()
        final = executor.plan(snap, target, exclude).final
        snap = store.write_resident(snap, final)
        if decision.mark_rolled_back is not None:
            snap = mark_rolled_back(store, snap, decision.mark_rolled_back, started.reason or "rolled back",
                                    decision.quarantine, started.actor)
        snap = ctx.record(store, snap, action, Result.REPAIRED, op, from_version=started.from_version,
                          to_version=target, reason="interrupted after the switch; completed",
                          details={"resident": list(final)})
        return snap, f"completed an interrupted {action.value} to v{target}"
    if decision.restore:
        snap = store.write_resident(snap, decision.restore)
    snap = ctx.record(store, snap, action, Result.ABORTED, op, from_version=started.from_version, to_version=target,
                      reason="interrupted before the switch; previous versions restored",
                      details={"resident": list(snap.resident)})
    return snap, f"undid an interrupted {action.value} to v{target}; {label(snap.served)} serves"


def mark_rolled_back(store: ModelStore, snap: ModelSnapshot, version: int, reason: str, quarantine: bool,
                     actor: str) -> ModelSnapshot:
    mark = status_after_rollback(snap.status(version), quarantine)
    if mark is None:
        return snap
    return store.record_verification(snap, version, Verification(
        status=mark, verified_by=actor, verified_at=now_iso(), golden=snap.attestation(version).verification.golden,
        reason=reason))
