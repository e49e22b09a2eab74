"""Room for the candidate: the memory check before a promote loads its third engine.

``core.memory`` decides; this reads the figures (the package's declared ``memory_mb``, the served
version's measured footprint, MemAvailable), unloads the resident fallback first when the policy
allows and the decision says so, and measures again before the candidate loads.
"""

from __future__ import annotations

import logging

from orchestrator import faults
from orchestrator.core.journal import Action, Result
from orchestrator.core.memory import DECLARED_FIELD, MemoryNeed, candidate_need, decide_memory
from orchestrator.errors import NotEnoughMemory, RepositoryCorrupt
from orchestrator.store.metafile import META_FILE
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases.context import Context

log = logging.getLogger(__name__)


def make_room(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, op: str,
              ) -> tuple[ModelSnapshot, frozenset[int]]:
    """The snapshot after any fallback was unloaded, and the versions unloaded (kept out of the switch's
    plan, so that the promote does not load them again); NotEnoughMemory when the candidate cannot fit."""
    need = _need(snap, version)
    available = ctx.mem_available()
    if need is None or available is None:
        log.info("%s v%s: no memory check (%s)", store.name, version,
                 "no figure for what it needs" if need is None else "the device does not report MemAvailable")
        return snap, frozenset()
    policy = snap.policies.promotion
    fallbacks = {v: snap.attestation(v).footprint_bytes for v in snap.resident if v != snap.served}
    decision = decide_memory(available, need, policy.memory_headroom_bytes, fallbacks,
                             policy.free_fallback_for_memory)
    if not decision.fits:
        raise NotEnoughMemory(f"{store.name} v{version} does not fit beside what serves: {decision.reason}")
    if not decision.drop:
        return snap, frozenset()
    dropped = ", ".join(f"v{v}" for v in decision.drop)
    ctx.progress(f"unloading fallback {dropped} to make room")
    previous = snap.resident
    snap = store.write_resident(snap, tuple(v for v in previous if v not in decision.drop))
    ctx.triton.load(store.name, to_json(snap.config))
    ctx.triton.wait_unloaded(store.name, set(decision.drop), ctx.settings.timeout_s)
    snap = ctx.record(store, snap, Action.PROMOTE, Result.STEP, op, to_version=version,
                      reason=decision.reason, details={"step": "fallback_unloaded", "versions": list(decision.drop)})
    faults.checkpoint("promote:fallback_unloaded")
    measured = ctx.mem_available()
    if measured is not None and measured < need.bytes + policy.memory_headroom_bytes:
        # Unloading did not free enough: put the fallback back, leave the device as it was.
        snap = store.write_resident(snap, previous)
        ctx.triton.load(store.name, to_json(snap.config))
        still = decide_memory(measured, need, policy.memory_headroom_bytes, {}, False)
        raise NotEnoughMemory(f"{store.name} v{version} does not fit beside what serves even with fallback "
                              f"{dropped} unloaded: {still.reason}; {dropped} loaded again")
    return snap, frozenset(decision.drop)


def _need(snap: ModelSnapshot, version: int) -> MemoryNeed | None:
    served = snap.served
    try:
        return candidate_need(snap.meta(version).extra.get(DECLARED_FIELD), served,
                              snap.attestation(served).footprint_bytes if served is not None else None)
    except ValueError as exc:
        raise RepositoryCorrupt(f"{snap.folder / str(version) / META_FILE}: {exc}") from exc
