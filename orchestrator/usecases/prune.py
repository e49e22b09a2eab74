"""Prune: remove the artifacts of versions the model can do without (``core/retention.py`` decides which).

Under the model's lock after ``repair``, like every mutating command: decide, then prune each version,
lowest first (``ModelStore.prune_version``: its meta.yaml and the checksums of its files into
``<state>/<model>/pruned/<N>/``, then its folder out of the repository; its attestation stays). Journaled:
``started`` with the plan, a ``step`` per version pruned, ``succeeded`` with what went and the bytes freed.
The records are written directly, never left to the watcher's backlog: nothing is deleted that the journal
could not record first. Nothing to prune writes nothing.

``dry_run`` decides only: no lock, no repair, nothing written. Triton is asked which versions it still
holds files of (kept); when it cannot answer, the disk decides alone (config.pbtxt's resident versions are
kept either way), and a warning says so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from orchestrator import faults
from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.core.retention import Kept, Retention, decide_retention
from orchestrator.errors import RepositoryCorrupt, TritonError, UsageError
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.store.shadow_state import active_shadow
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases.context import Context
from orchestrator.usecases.repair import repair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunedVersion:
    version: int
    status: str  # its verification when it was pruned ("corrupt": an unreadable meta or attestation)
    freed_bytes: int  # what its files took (dry run: would free)


@dataclass(frozen=True)
class PruneResult:
    model: str
    dry_run: bool
    keep: int
    pruned: tuple[PrunedVersion, ...]  # lowest first; with dry_run, what would be
    kept: tuple[Kept, ...]  # highest first, each with why
    freed_bytes: int
    triton_asked: bool  # False: Triton did not answer, the disk decided alone

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "dry_run": self.dry_run, "keep": self.keep,
                "pruned": [asdict(p) for p in self.pruned], "freed_bytes": self.freed_bytes,
                "kept": [{"version": k.version, "reasons": [r.value for r in k.reasons]} for k in self.kept],
                "triton_asked": self.triton_asked}


def prune(ctx: Context, model: str | None, keep: int | None = None, dry_run: bool = False) -> PruneResult:
    """``keep``: the newest versions kept besides the rest of core.retention's list (default: the policy's)."""
    if keep is not None and (isinstance(keep, bool) or keep < 1):
        raise UsageError(f"--keep must be at least 1, not {keep}: the newest version is always kept")
    store = ctx.store(model)
    if dry_run:
        snap = store.snapshot()
        retention, asked = decide(ctx, store, snap, keep)
        would = tuple(PrunedVersion(v, _status(snap, v), store.version_bytes(v)) for v in retention.prunable)
        return PruneResult(store.name, True, retention.keep, would, retention.kept,
                           sum(p.freed_bytes for p in would), asked)
    with ctx.locked(store):
        snap = repair(ctx, store).snapshot
        retention, asked = decide(ctx, store, snap, keep)
        pruned = _prune(ctx, store, snap, retention) if retention.prunable else ()
    return PruneResult(store.name, False, retention.keep, pruned, retention.kept,
                       sum(p.freed_bytes for p in pruned), asked)


def decide(ctx: Context, store: ModelStore, snap: ModelSnapshot, keep: int | None) -> tuple[Retention, bool]:
    """What may go, and whether Triton was asked what it holds."""
    held, asked = _held_by_triton(ctx, store)
    shadow = active_shadow(store)
    under_test = {*store.candidate_versions(), *([shadow.config.version] if shadow is not None else [])}
    retention = decide_retention(
        snap.versions, keep=keep if keep is not None else snap.policies.retention.keep, served=snap.served,
        resident=snap.resident, last_verified=snap.last_verified(), open_operations=snap.journal.open,
        under_test=under_test, loaded=held)
    return retention, asked


def _prune(ctx: Context, store: ModelStore, snap: ModelSnapshot, retention: Retention) -> tuple[PrunedVersion, ...]:
    op = new_op_id()
    started = ctx.clock()
    kept = {str(k.version): k.describe() for k in retention.kept}
    snap = _record(ctx, store, snap, Result.STARTED, op, reason=f"keep the newest {retention.keep}",
                   details={"prunable": list(retention.prunable), "keep": retention.keep, "kept": kept})
    faults.checkpoint("prune:started")
    done: list[PrunedVersion] = []
    try:
        for version in retention.prunable:
            status = _status(snap, version)
            snap, pruned = store.prune_version(snap, version, op, status)
            done.append(PrunedVersion(version, status, pruned.freed_bytes))
            snap = _record(ctx, store, snap, Result.STEP, op, to_version=version,
                           reason=f"pruned v{version} ({status})",
                           details={"step": "pruned", "freed_bytes": pruned.freed_bytes,
                                    "evidence": str(pruned.evidence)})
            faults.checkpoint("prune:pruned")
    except OSError as exc:  # the version being pruned is intact; those before it are gone
        _record(ctx, store, snap, Result.FAILED, op, reason=f"write failed: {exc}; {_summary(done)}",
                details=_outcome(done))
        raise
    _record(ctx, store, snap, Result.SUCCEEDED, op, reason=_summary(done), duration_ms=ctx.ms_since(started),
            details=_outcome(done))
    return tuple(done)


def _outcome(done: list[PrunedVersion]) -> dict[str, object]:
    return {"pruned": [p.version for p in done], "freed_bytes": sum(p.freed_bytes for p in done)}


def _summary(done: list[PrunedVersion]) -> str:
    if not done:
        return "nothing pruned"
    return f"pruned {', '.join(f'v{p.version}' for p in done)}: {sum(p.freed_bytes for p in done)} bytes freed"


def _record(ctx: Context, store: ModelStore, snap: ModelSnapshot, result: Result, op: str,
            **fields: object) -> ModelSnapshot:
    """Straight to the journal (an OSError fails the command): never into the watcher's backlog."""
    return store.record(snap, Record(action=Action.PRUNE, result=result, op=op, actor=ctx.settings.actor,
                                     **fields))  # type: ignore[arg-type]


def _held_by_triton(ctx: Context, store: ModelStore) -> tuple[set[int], bool]:
    names = {store.name, candidate_name(store.name)}
    try:
        entries = ctx.triton.index()
    except TritonError as exc:  # unreachable, or a locked API: config.pbtxt's resident versions are kept anyway
        log.warning("%s: Triton was not asked which versions it holds (%s); the disk decides", store.name, exc)
        return set(), False
    return {e.version for e in entries if e.name in names and e.version is not None and e.state.holds_files}, True


def _status(snap: ModelSnapshot, version: int) -> str:
    attestation = snap.attestations[version]
    return "corrupt" if isinstance(attestation, RepositoryCorrupt) else attestation.status.value
