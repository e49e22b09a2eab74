"""Reconcile: repair interrupted commands, rewrite a config.pbtxt that would serve a version that may not
(``repair`` runs the residency guard), and load what the disk then says into Triton."""

from __future__ import annotations

from orchestrator.core.journal import Action, History
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import TritonState
from orchestrator.usecases import executor
from orchestrator.usecases.context import Context, SwitchResult
from orchestrator.usecases.repair import repair


def reconcile(ctx: Context, model: str | None = None) -> list[str]:
    names = [ctx.resolve_model(model)] if model else ctx.repository.models()
    notes = []
    for name in names:
        store = ctx.repository.model(name)
        with ctx.locked(store):
            repaired = repair(ctx, store)
            notes += repaired.notes
            notes += executor.sync_triton(ctx, store, repaired.snapshot, strict=True)
            notes += load_route(ctx, repaired.snapshot)
    return notes


def load_route(ctx: Context, snap: ModelSnapshot) -> list[str]:
    """The ensemble clients call, loaded when Triton does not hold it READY (after a restart that loaded only
    the model): Triton loads its steps with it."""
    route = snap.route
    if route is None:
        return []
    if any(e.state is TritonState.READY for e in ctx.triton.states(route.name).values()):
        return []
    ctx.triton.load(route.name)
    return [f"loaded {route.name}, the ensemble clients call to reach {snap.name}"]


def settle(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, action: Action) -> SwitchResult:
    """Already served: only make sure Triton agrees with the disk (idempotent commands)."""
    executor.sync_triton(ctx, store, snap)
    return SwitchResult(store.name, action.value, version, version, snap.resident, 0.0, False)


def history(ctx: Context, model: str | None) -> History:
    return ctx.store(model).journal.read()
