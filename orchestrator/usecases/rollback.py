"""Rollback: serve the last verified version (or a named one) again.

With the target resident, the switch is a policy that drops the served version: no load. The
command returns once every new request is answered by the target: the version rolled back from
is marked in its attestation (state folder) while Triton unloads it in the background.
"""

from __future__ import annotations

from orchestrator.core.journal import Action, Result, new_op_id
from orchestrator.core.switch import rollback_target
from orchestrator.errors import StaleJudgement
from orchestrator.usecases import executor
from orchestrator.usecases.context import Context, SwitchResult
from orchestrator.usecases.labels import carry
from orchestrator.usecases.reconcile import settle
from orchestrator.usecases.repair import mark_rolled_back, repair


def rollback(ctx: Context, model: str | None, to: int | None = None, force: bool = False,
             reason: str = "requested by operator", quarantine: bool = False,
             evidence: dict[str, object] | None = None, judged: int | None = None) -> SwitchResult:
    """``quarantine`` (the watcher's automatic rollback) marks the version rolled back from so that it
    is never promoted again without --force; ``evidence`` goes into the journal. ``judged``: the version
    the evidence is about; when another serves by the time the lock is held, nothing switches
    (StaleJudgement, journaled): the evidence says nothing about the version now serving."""
    store = ctx.store(model)
    with ctx.locked(store):
        repaired = repair(ctx, store)
        snap = repaired.snapshot
        if judged is not None and snap.served != judged:
            message = (f"{store.name}: v{judged} was judged, but v{snap.served} serves now (switched meanwhile); "
                       f"the judgement is dropped")
            ctx.record(store, snap, Action.ROLLBACK, Result.REFUSED, new_op_id(), from_version=snap.served,
                       reason=f"{message}: {reason}", details={"judged": judged, "evidence": evidence or {}})
            raise StaleJudgement(message)
        guard = repaired.residency
        if guard is not None and to is None and max(guard.resident) not in guard.allowed:
            # A hand edit made an unverified version the one Triton serves; the guard just took it off,
            # which is the rollback asked for: rolling back once more would drop the version serving now.
            return SwitchResult(store.name, "rollback", max(guard.resident), snap.served or 0, snap.resident, 0.0,
                                True)
        done = repaired.decision
        if done is not None and done.switched and done.started.action is Action.ROLLBACK \
                and to in (None, done.started.to_version):
            # The interrupted rollback this command repeats has just been completed.
            executor.sync_triton(ctx, store, snap)
            return SwitchResult(store.name, "rollback", done.started.from_version, snap.served or 0, snap.resident,
                                0.0, True)
        served = snap.served
        if to is not None:
            snap.require(to)
        exclude = {served} if served is not None else set()
        fallbacks = snap.fallbacks(exclude=exclude, limit=1) if to is None and served is not None else []
        to = rollback_target(store.name, served, to, fallbacks, snap.status(to) if to is not None else None, force)
        if to == served:
            return settle(ctx, store, snap, to, Action.ROLLBACK)
        assert served is not None
        ctx.triton.require_live()
        op = new_op_id()
        started = ctx.clock()
        details = {"quarantine": quarantine, "evidence": evidence or {}}
        snap = ctx.record(store, snap, Action.ROLLBACK, Result.STARTED, op, from_version=served, to_version=to,
                          reason=reason, details={"resident_before": list(snap.resident), **details})
        try:
            snap, switched_at = executor.switch(ctx, store, snap, to, op, Action.ROLLBACK, exclude={served})
        except OSError as exc:
            executor.close_if_nothing_switched(ctx, store, Action.ROLLBACK, op, served, to, exc)
            raise
        switch_ms = round((switched_at - started) * 1000.0, 2)
        # Triton unloads the dropped version in the background; its attestation is not in its folder.
        # The watcher's rollback goes on when the state disk is full: the mark is written when it allows.
        marked = ctx.write_or_keep(f"{store.name} v{served}'s rolled-back mark", lambda before=snap: mark_rolled_back(
            store, before, served, reason, quarantine, ctx.settings.actor))
        snap = marked if marked is not None else snap
        duration = ctx.ms_since(started)
        ctx.record(store, snap, Action.ROLLBACK, Result.SUCCEEDED, op, from_version=served, to_version=to,
                   reason=reason, duration_ms=duration,
                   details={"resident": list(snap.resident), "switch_ms": switch_ms, **details,
                            **carry(ctx, store, snap)})
        return SwitchResult(store.name, "rollback", served, to, snap.resident, duration, True, switch_ms=switch_ms)
