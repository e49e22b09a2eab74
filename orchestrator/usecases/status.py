"""Read-only views for ``status`` and ``history``: what disk says, what Triton holds, where they differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from orchestrator.errors import RepositoryCorrupt, TritonError
from orchestrator.store.baselines import drift_progress
from orchestrator.store.repository import ModelStore
from orchestrator.triton.protocol import TritonState
from orchestrator.usecases.context import Context


@dataclass(frozen=True)
class VersionRow:
    version: int
    status: str
    resident: bool
    triton_state: str  # READY, UNAVAILABLE, ..., "" when Triton does not know it, "?" when unreachable
    created_at: str
    reason: str
    drift_baseline: str = ""  # windows of its drift baseline recorded / needed; "" when none


@dataclass(frozen=True)
class ModelStatus:
    model: str
    served: int | None
    last_verified: int | None
    resident: list[int]
    versions: list[VersionRow]
    triton_reachable: bool
    in_sync: bool  # Triton holds exactly the resident versions
    interrupted: str | None  # an operation the next command will repair
    triton_error: str = ""
    journal_behind: str | None = None  # the journal's last switch is not what config.pbtxt serves
    journal_damaged: list[str] = field(default_factory=list)  # where damaged records are (the latest)
    journal_damaged_count: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def model_status(ctx: Context, store: ModelStore) -> ModelStatus:
    snap = store.snapshot()
    resident = list(snap.resident)
    triton_error = ""
    try:
        states = {v: e.state.value for v, e in ctx.triton.states(store.name).items()}
        reachable = True
    except TritonError as exc:  # unreachable, or a locked API refusing us: disk still answers
        states, reachable, triton_error = {}, False, str(exc)
    rows = []
    drift = drift_progress(store)
    for version in snap.versions:
        try:
            meta, attestation = snap.meta(version), snap.attestation(version)
            verification = attestation.verification
            status, created, reason = verification.status.value, meta.created_at, verification.reason or ""
        except RepositoryCorrupt as exc:
            status, created, reason = "corrupt", "", str(exc)
        rows.append(VersionRow(version, status, version in resident, states.get(version, "") if reachable else "?",
                               created, reason, drift.get(version, "")))
    ready = {v for v, s in states.items() if s == TritonState.READY.value}
    unfinished = snap.journal.unfinished()
    return ModelStatus(
        model=store.name,
        served=snap.served,
        last_verified=snap.last_verified(),
        resident=resident,
        versions=rows,
        triton_reachable=reachable,
        in_sync=reachable and ready == set(resident),
        interrupted=f"{unfinished.action.value} to v{unfinished.to_version} (op {unfinished.op})" if unfinished
        else None,
        triton_error=triton_error,
        journal_behind=None if unfinished else journal_gap(snap.journal.served, snap.served),
        journal_damaged=list(snap.journal.damaged),
        journal_damaged_count=snap.journal.damaged_count,
    )


def journal_gap(journaled: tuple[int, ...], served: int | None) -> str | None:
    """The journal's last switch says one version serves, config.pbtxt another: records the watcher could
    not write yet (a full disk; it writes them when it can), or a config edited by hand."""
    if not journaled or journaled[-1] == served:
        return None
    return (f"the journal's last switch served v{journaled[-1]}, config.pbtxt serves v{served}: records not "
            f"written yet (disk full?) or config.pbtxt edited by hand")


def statuses(ctx: Context, model: str | None) -> list[ModelStatus]:
    names = [model] if model else ctx.repository.models()
    return [model_status(ctx, ctx.repository.model(name)) for name in names]
