"""Read-only views for ``status`` and ``history``: what disk says, what Triton holds, where they differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.core.switch import fallback_order
from orchestrator.daemons.watcher import drift_progress
from orchestrator.errors import RepositoryCorrupt, TritonError
from orchestrator.store.repository import ModelStore
from orchestrator.usecases.operations import Orchestrator, served_history


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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def model_status(orchestrator: Orchestrator, store: ModelStore) -> ModelStatus:
    resident = list(store.resident())
    served = max(resident) if resident else None
    history = store.journal.read()
    triton_error = ""
    try:
        states = {v: e.state for v, e in orchestrator.triton.states(store.name).items()}
        reachable = True
    except TritonError as exc:  # unreachable, or a locked API refusing us: disk still answers
        states, reachable, triton_error = {}, False, str(exc)
    rows = []
    drift = drift_progress(store)
    for version in store.versions():
        try:
            meta = store.meta(version)
            status, created, reason = meta.verification.status.value, meta.created_at, meta.verification.reason or ""
        except RepositoryCorrupt as exc:
            status, created, reason = "corrupt", "", str(exc)
        rows.append(VersionRow(version, status, version in resident, states.get(version, "") if reachable else "?",
                               created, reason, drift.get(version, "")))
    fallbacks = fallback_order(served_history(history), store.lazy_statuses(), exclude=served if served is not None
                               else -1, limit=1)
    ready = {v for v, s in states.items() if s == "READY"}
    unfinished = history.unfinished()
    return ModelStatus(
        model=store.name,
        served=served,
        last_verified=fallbacks[0] if fallbacks else None,
        resident=resident,
        versions=rows,
        triton_reachable=reachable,
        in_sync=reachable and ready == set(resident),
        interrupted=f"{unfinished.action} to v{unfinished.to_version} (op {unfinished.op})" if unfinished else None,
        triton_error=triton_error,
    )

