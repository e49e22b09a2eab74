"""Version labels: move one (loading a verified fallback first when it must), remove one, resolve a name
a user typed (``stable``, ``v2``, ``2``) to a version, and carry ``stable`` along with each switch."""

from __future__ import annotations

import logging

from orchestrator.core.journal import Action, Result, new_op_id
from orchestrator.core.labels import STABLE, after_switch, check_name, decide_move
from orchestrator.core.versions import parse_version
from orchestrator.errors import LoadFailed, OrchestratorError, TritonError, UsageError
from orchestrator.store.labels import read_labels, write_labels
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import TritonState
from orchestrator.usecases.context import Context
from orchestrator.usecases.repair import repair

log = logging.getLogger(__name__)


def resolve(ctx: Context, model: str | None, text: str) -> int:
    """``v2`` / ``2`` as a number, anything else as one of the model's labels."""
    try:
        return parse_version(text)
    except UsageError:
        pass
    store = ctx.store(model)
    labels = read_labels(store.state)
    if text in labels:
        return labels[text]
    known = ", ".join(f"{k} (v{v})" for k, v in labels.items()) or "none"
    raise UsageError(f"{text!r} is neither a version (v<N>) nor a label of {store.name} (labels: {known})")


def set_label(ctx: Context, model: str | None, name: str, version: int) -> tuple[dict[str, int], bool]:
    """Point ``name`` at ``version``; returns the labels and whether the version had to be loaded."""
    check_name(name)
    store = ctx.store(model)
    with ctx.locked(store):
        snap = repair(ctx, store).snapshot
        snap.require(version)
        labels = read_labels(store.state)
        ready = _ready(ctx, store)
        move = decide_move(store.name, name, version, snap.served, ready, snap.status(version))
        if move.load:
            snap = _load_beside(ctx, store, snap, version)
        before = labels.get(name)
        labels = dict(sorted({**labels, name: version}.items()))
        write_labels(store.state, labels)
        ctx.record(store, snap, Action.LABEL, Result.SUCCEEDED, new_op_id(), from_version=before, to_version=version,
                   reason=f"label {name} -> v{version}" + (" (loaded beside the served version)" if move.load else ""),
                   details={"label": name, "loaded": move.load, "labels": labels})
        return labels, move.load


def remove_label(ctx: Context, model: str | None, name: str) -> int | None:
    """The version ``name`` pointed at, or None when there was no such label."""
    store = ctx.store(model)
    if name == STABLE:
        raise UsageError(f"{STABLE!r} follows the served version of {store.name} and is not removed")
    with ctx.locked(store):
        labels = read_labels(store.state)
        if name not in labels:
            return None
        version = labels.pop(name)
        write_labels(store.state, labels)
        snap = store.snapshot()
        ctx.record(store, snap, Action.LABEL, Result.SUCCEEDED, new_op_id(), from_version=version,
                   reason=f"label {name} removed (was v{version}); the next switch may unload v{version}",
                   details={"label": name, "removed": True, "labels": labels})
        return version


def carry(ctx: Context, store: ModelStore, snap: ModelSnapshot) -> dict[str, object]:
    """After a switch: ``stable`` to the version now serving, labels of versions no longer loaded removed.
    What changed goes into the switch's final record; a label file that cannot be read or written does not
    undo a switch that happened (logged, and `status` says so)."""
    if snap.served is None:
        return {}
    try:
        labels, removed = after_switch(read_labels(store.state), snap.served, snap.resident)
        write_labels(store.state, labels)
    except (OrchestratorError, OSError) as exc:
        log.error("%s: labels not moved after the switch: %s", store.name, exc)
        return {"labels_error": str(exc)}
    return {"labels": labels, **({"labels_removed": removed} if removed else {})}


def _ready(ctx: Context, store: ModelStore) -> set[int]:
    return {v for v, e in ctx.triton.states(store.name).items() if e.state is TritonState.READY}


def _load_beside(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int) -> ModelSnapshot:
    """Load a verified version below the served one, as a fallback is: the served version keeps serving."""
    previous = snap.resident
    snap = store.write_resident(snap, tuple(sorted({*previous, version})))
    try:
        ctx.triton.load(store.name, to_json(snap.config))
    except LoadFailed:
        snap = store.write_resident(snap, previous)
        ctx.triton.load(store.name, to_json(snap.config))
        raise
    if version not in _ready(ctx, store):
        raise TritonError(f"{store.name} v{version} was loaded but Triton does not report it READY")
    return snap
