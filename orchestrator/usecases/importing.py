"""Import: file a package (folder or .tar.gz) as an immutable version of its model.

The package is unpacked into a private copy, its signature, checksums, contract and (for
TensorRT) plan compatibility checked, then staged under a name Triton ignores and renamed in.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import faults
from orchestrator.core.journal import Action, Record, Result, new_op_id
from orchestrator.delivery.package import read_manifest, unpacked, verify_package
from orchestrator.delivery.plan_compat import plan_incompatibility
from orchestrator.delivery.signing import record_signer
from orchestrator.errors import OrchestratorError, PackageRejected, UnknownModel
from orchestrator.settings import ENV_MAX_VERSION_JUMP
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.usecases.context import Context, ImportResult
from orchestrator.usecases.repair import repair


def import_package(ctx: Context, package: Path) -> ImportResult:
    try:
        with unpacked(package) as folder:
            # The signature over meta.yaml's exact bytes first: nothing unverified is parsed.
            signer = ctx.trust.check(folder, str(package))
            store = _package_model(ctx, folder, str(package))
            with ctx.locked(store):
                snap = repair(ctx, store).snapshot
                return _file(ctx, store, snap, folder, str(package), signer)
    except PackageRejected as exc:
        _journal_refusal(ctx, package, exc)
        raise


def _package_model(ctx: Context, folder: Path, package: str) -> ModelStore:
    model = read_manifest(folder, package).model
    try:
        return ctx.repository.model(model)
    except UnknownModel as exc:
        raise PackageRejected(package, str(exc)) from exc


def _file(ctx: Context, store: ModelStore, snap: ModelSnapshot, folder: Path, package: str,
          signer: str | None) -> ImportResult:
    op = new_op_id()
    try:
        meta = record_signer(verify_package(folder, package, store.name, snap.config), signer)
        incompatible = plan_incompatibility(snap.config, meta, folder, ctx.settings)
        if incompatible:
            raise PackageRejected(package, incompatible)
        version = _version_number(store, snap, meta.version, package, ctx.settings.max_version_jump)
    except PackageRejected as exc:
        ctx.record(store, snap, Action.IMPORT, Result.REFUSED, op, reason=exc.reason, details={"package": package})
        exc.journaled = True
        raise
    started = ctx.clock()
    snap = ctx.record(store, snap, Action.IMPORT, Result.STARTED, op, to_version=version,
                      details={"package": package})
    try:
        snap = _pin_versions(ctx, store, snap, op)
        store.file_version(folder, meta, version, op)
    except OSError as exc:  # disk full, I/O error: staging is gone, nothing was filed
        ctx.record(store, snap, Action.IMPORT, Result.FAILED, op, to_version=version, reason=f"write failed: {exc}")
        raise
    faults.checkpoint("import:filed")
    ctx.record(store, snap, Action.IMPORT, Result.SUCCEEDED, op, to_version=version,
               duration_ms=ctx.ms_since(started), details={"package": package, "artifacts": meta.artifacts})
    return ImportResult(store.name, version, dict(meta.artifacts))


def _pin_versions(ctx: Context, store: ModelStore, snap: ModelSnapshot, op: str) -> ModelSnapshot:
    """A config that lets Triton choose (no version_policy: the latest; ``latest``, ``all``) would serve the
    new, unverified folder at the next load or restart: it is pinned to what it serves now, first. ``repair``'s
    residency guard ran before: what it serves now may serve (a guard rewrite left it ``specific`` already)."""
    policy = snap.config_policy
    if policy.kind == "specific":
        return snap
    pinned = snap.resident
    snap = store.write_resident(snap, pinned)
    return ctx.record(store, snap, Action.IMPORT, Result.STEP, op,
                      reason=f"config.pbtxt let Triton load the latest version(s) ({policy.kind}); pinned to "
                             f"{', '.join(f'v{v}' for v in pinned) or 'none'} before filing an unverified one",
                      details={"step": "version_policy_pinned", "versions": list(pinned)})


def _journal_refusal(ctx: Context, package: Path, exc: PackageRejected) -> None:
    """A package refused before its model was known goes to the only (or default) model's journal."""
    if exc.journaled:
        return
    try:
        store = ctx.store(None)
    except OrchestratorError:
        return
    store.journal.append(Record(action=Action.IMPORT, result=Result.REFUSED, op=new_op_id(),
                                actor=ctx.settings.actor, reason=exc.reason, details={"package": str(package)}))


def _version_number(store: ModelStore, snap: ModelSnapshot, declared: int | None, package: str, jump: int) -> int:
    latest = store.next_version(snap) - 1
    if declared is None:
        return latest + 1
    if declared <= latest:
        raise PackageRejected(package, f"it declares version {declared}, but v{latest} exists: a package may "
                                       f"not re-use or lower a version number")
    if declared > latest + jump:
        raise PackageRejected(package, f"it declares version {declared}, more than {jump} past v{latest} "
                                       f"({ENV_MAX_VERSION_JUMP} allows a larger jump)")
    return declared
