"""Pause and resume the watcher's automatic rollback of a model (Argo Rollouts' pause, for the watcher):
while paused, what would roll back is alerted instead; an operator's rollback works as always."""

from __future__ import annotations

from orchestrator.core.journal import Action, Result, new_op_id, now_iso
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.pause import Pause, read_pause, remove_pause, write_pause
from orchestrator.usecases.context import Context


def pause(ctx: Context, model: str | None, reason: str) -> tuple[Pause, bool]:
    """The pause in effect, and whether this call made it (False: it was paused already, left as it was)."""
    store = ctx.store(model)
    with ctx.locked(store):
        current = read_pause(store.state)
        if current is not None:
            return current, False
        made = Pause(ctx.settings.actor, now_iso(), reason)
        write_pause(store.state, made)
        snap = store.snapshot()
        ctx.record(store, snap, Action.PAUSE, Result.SUCCEEDED, new_op_id(), from_version=snap.served,
                   reason=reason, details={"automatic_rollback": "paused"})
        return made, True


def resume(ctx: Context, model: str | None) -> Pause | None:
    """The pause that was lifted, or None when the model was not paused."""
    store = ctx.store(model)
    with ctx.locked(store):
        try:
            current = read_pause(store.state)
        except RepositoryCorrupt:  # an unreadable pause file is removed all the same
            current = Pause("?", "?", "unreadable pause file")
        if current is None or not remove_pause(store.state):
            return None
        snap = store.snapshot()
        ctx.record(store, snap, Action.RESUME, Result.SUCCEEDED, new_op_id(), from_version=snap.served,
                   reason=f"paused by {current.by} at {current.at}: {current.reason}".rstrip(": "),
                   details={"automatic_rollback": "resumed"})
        return current
