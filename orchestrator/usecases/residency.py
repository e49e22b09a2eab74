"""The residency guard applied: config.pbtxt never makes Triton load a version that may not serve.

``core.residency.guard_resident`` decides over the snapshot; this rewrites the policy (atomically,
journaled) or refuses before anything is written or loaded. ``repair`` runs it in every mutating
command, after an interrupted operation was completed or undone (a completed ``rollback --force``
is journal-served by then); the watcher asks ``residency`` whenever the config's resident set
changes and repairs when it finds something to drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core.journal import Action, Result, new_op_id
from orchestrator.core.residency import ResidencyDecision, guard_resident, refusal
from orchestrator.errors import RepositoryCorrupt, UnverifiedResident
from orchestrator.store.modelconfig import CONFIG_FILE
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases.context import Context


def residency(snap: ModelSnapshot) -> ResidencyDecision:
    """What the guard would do with this snapshot; reads only the resident versions' metas and attestations."""
    return guard_resident(snap.resident, snap.statuses(), snap.journal.served, _filed_here(snap))


@dataclass(frozen=True)
class Guarded:
    snapshot: ModelSnapshot  # after the rewrite, when there was one
    rewrite: ResidencyDecision | None = None  # config.pbtxt was rewritten: what was dropped, what stays
    note: str = ""  # the journaled reason, for the log


def guard_config(ctx: Context, store: ModelStore, snap: ModelSnapshot) -> Guarded:
    """Rewrite a config that would load a version that may not serve; UnverifiedResident (journaled, nothing
    written or loaded) when no version could serve instead. Loading the rewrite into Triton is the caller's."""
    decision = residency(snap)
    if decision.refuse:
        message = refusal(decision, str(snap.folder / CONFIG_FILE), snap.journal.served)
        ctx.record(store, snap, Action.RECONCILE, Result.REFUSED, new_op_id(), reason=message,
                   details=_details(decision))
        raise UnverifiedResident(store.name, message)
    if not decision.rewrite:
        return Guarded(snap)
    reason = decision.describe(_how(snap))
    snap = store.write_resident(snap, decision.allowed)
    # to_version: the journal now says this version serves (which also ends a bootstrap).
    snap = ctx.record(store, snap, Action.RECONCILE, Result.REPAIRED, new_op_id(), to_version=snap.served,
                      reason=reason, details=_details(decision))
    return Guarded(snap, decision, reason)


def _filed_here(snap: ModelSnapshot) -> frozenset[int]:
    """Resident versions this orchestrator's import filed (it stamps ``filed_at``; an unreadable meta counts
    too): asked only while the journal has no served version, when the guard adopts what was there before."""
    if snap.journal.served:
        return frozenset()
    filed = set()
    for version in snap.resident:
        meta = snap.metas[version]
        if isinstance(meta, RepositoryCorrupt) or meta.filed_at:
            filed.add(version)
    return frozenset(filed)


def _how(snap: ModelSnapshot) -> str:
    policy = snap.config_policy
    if policy.kind == "specific":
        return "listed"
    if not snap.config.HasField("version_policy"):
        return "had no version_policy, so Triton took the newest folder,"
    return f"had version_policy {policy.kind}, so Triton took"


def _details(decision: ResidencyDecision) -> dict[str, Any]:
    return {"dropped": [{"version": v, "status": s.value} for v, s in decision.dropped],
            "resident_before": list(decision.resident), "resident": list(decision.allowed),
            "restored": decision.restored}
