"""Read-only views for ``status`` and ``history``: what disk says, what Triton holds, where they differ."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from orchestrator.core.memory import MIB
from orchestrator.core.model import VersionStatus
from orchestrator.core.probe_budget import Budget, last_switch, since, standing
from orchestrator.errors import PolicyViolation, RepositoryCorrupt, TritonError
from orchestrator.store.baselines import drift_progress
from orchestrator.store.labels import read_labels
from orchestrator.store.pause import pause_in_effect
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import TritonState
from orchestrator.usecases.context import Context


@dataclass(frozen=True)
class VersionRow:
    version: int
    status: str
    resident: bool
    triton_state: str | None  # READY, UNAVAILABLE, ..., "" when Triton does not know it, None when unreachable
    created_at: str
    reason: str
    drift_baseline: str = ""  # windows of its drift baseline recorded / needed; "" when none
    # For `-o wide`: when it was filed, what its load cost, failed loads since the last good one.
    filed_at: str = ""
    footprint_mb: float | None = None
    load_failures: int = 0
    labels: list[str] = field(default_factory=list)  # the version labels pointing at it (stable, canary)


@dataclass(frozen=True)
class ProbeBudget:
    """The watcher's probe budget in force (``core/probe_budget.py``), from the policy and the journal's last
    switch: what the watcher uses, computed without asking it."""

    phase: str  # bake or steady
    share: float  # of the device's inference time, in force now
    steady_share: float  # after the bake: the device's, split among the models watched (``sharers``)
    bake_left_s: float  # 0 at steady state
    sharers: int = 1  # the repository's models, which a daemon watching them all splits the steady share among


@dataclass(frozen=True)
class ModelStatus:
    model: str
    served: int | None
    fallback: int | None  # the rollback target: the best verified version other than the served one
    resident: list[int]
    versions: list[VersionRow]
    triton_reachable: bool
    in_sync: bool  # Triton holds exactly the resident versions
    interrupted: str | None  # an operation the next command will repair
    triton_error: str = ""
    triton_exit_code: int = 0  # the exit code of Triton's error (9 unreachable, 8 refused), 0 when it answered
    journal_behind: str | None = None  # the journal's last switch is not what config.pbtxt serves
    journal_damaged: list[str] = field(default_factory=list)  # where damaged records are (the latest)
    journal_damaged_count: int = 0
    served_status: str | None = None  # the served version's status (verified, unverified, ...)
    paused: dict[str, str] | None = None  # automatic rollback paused: by, at, reason
    pruned: list[int] = field(default_factory=list)  # versions whose artifacts `prune` removed (evidence kept)
    labels: dict[str, int] = field(default_factory=dict)  # version labels: name -> version
    labels_error: str = ""  # labels.json unreadable
    route: str = ""  # the ensemble clients call to reach the model ("" when they call it directly)
    route_steps: list[str] = field(default_factory=list)
    route_state: str | None = None  # the ensemble's state in Triton (None when unreachable or no route)
    route_error: str = ""  # which ensemble routes to the model cannot be told
    probe_budget: ProbeBudget | None = None  # None: policy.yaml unreadable (the watcher says why)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "problems": self.problems, "healthy": not self.problems}

    @property
    def problems(self) -> list[str]:
        """What makes ``status`` exit non-zero: Triton unreachable, Triton out of sync with the disk, or a
        served version that is not verified."""
        found = []
        if not self.triton_reachable:
            found.append(self.triton_error or "Triton unreachable")
        elif not self.in_sync:
            ready = [v.version for v in self.versions if v.triton_state == TritonState.READY.value]
            found.append(f"Triton holds {_listed(ready)}, the disk says {_listed(self.resident)}: run "
                         f"`orchestrate reconcile {self.model}`")
        if self.served is not None and self.served_status != VersionStatus.VERIFIED.value:
            found.append(f"v{self.served} serves and is {self.served_status or 'unreadable'}, not verified")
        if self.route_error:
            found.append(self.route_error)
        elif self.route and self.triton_reachable and self.route_state != TritonState.READY.value:
            found.append(f"{self.route}, the ensemble clients call, is {self.route_state or 'not loaded'} in Triton: "
                         f"clients fail until it is loaded (`orchestrate reconcile {self.model}`)")
        return found


def _listed(versions: list[int]) -> str:
    return ", ".join(f"v{v}" for v in versions) or "nothing"


def model_status(ctx: Context, store: ModelStore, sharers: int = 1) -> ModelStatus:
    """``sharers``: the repository's managed models, which share the device's steady probe budget."""
    snap = store.snapshot()
    resident = list(snap.resident)
    triton_error, triton_exit_code = "", 0
    try:
        states = {v: e.state.value for v, e in ctx.triton.states(store.name).items()}
        reachable = True
    except TritonError as exc:  # unreachable, or a locked API refusing us: disk still answers
        states, reachable, triton_error, triton_exit_code = {}, False, str(exc), exc.exit_code
    rows = []
    drift = drift_progress(snap)
    try:
        labels, labels_error = read_labels(store.state), ""
    except RepositoryCorrupt as exc:
        labels, labels_error = {}, str(exc)
    for version in snap.versions:
        filed, footprint, failures = "", None, 0
        try:
            meta, attestation = snap.meta(version), snap.attestation(version)
            verification = attestation.verification
            status, created, reason = verification.status.value, meta.created_at, verification.reason or ""
            filed, failures = attestation.filed_at or meta.filed_at, attestation.load_failures
            footprint = round(attestation.footprint_bytes / MIB, 1) if attestation.footprint_bytes else None
        except RepositoryCorrupt as exc:
            status, created, reason = "corrupt", "", str(exc)
        rows.append(VersionRow(version, status, version in resident, states.get(version, "") if reachable else None,
                               created, reason, drift.get(version, ""), filed, footprint, failures,
                               [name for name, v in labels.items() if v == version]))
    ready = {v for v, s in states.items() if s == TritonState.READY.value}
    unfinished = snap.journal.unfinished()
    route, route_error, route_state = None, "", None
    try:
        route = snap.route
    except PolicyViolation as exc:
        route_error = str(exc)
    if route is not None and reachable:
        try:
            route_state = next((e.state.value for e in ctx.triton.states(route.name).values()), "")
        except TritonError:
            route_state = None
    return ModelStatus(
        model=store.name,
        served=snap.served,
        fallback=snap.last_verified(),
        resident=resident,
        versions=rows,
        triton_reachable=reachable,
        in_sync=reachable and ready == set(resident),
        interrupted=None if unfinished is None else unfinished.action.value + (
            f" to v{unfinished.to_version}" if unfinished.to_version is not None else "") + f" (op {unfinished.op})",
        triton_error=triton_error,
        triton_exit_code=triton_exit_code,
        journal_behind=None if unfinished else journal_gap(snap.journal.served, snap.served),
        journal_damaged=list(snap.journal.damaged),
        journal_damaged_count=snap.journal.damaged_count,
        served_status=next((r.status for r in rows if r.version == snap.served), None),
        paused=pause_in_effect(store.state),
        pruned=list(store.pruned_versions()),
        labels=labels,
        labels_error=labels_error,
        route=route.name if route is not None else "",
        route_steps=[step.model for step in route.steps] if route is not None else [],
        route_state=route_state,
        route_error=route_error,
        probe_budget=probe_budget(snap, sharers=sharers),
    )


def probe_budget(snap: ModelSnapshot, now_unix: float | None = None, sharers: int = 1) -> ProbeBudget | None:
    """As a daemon watching ``sharers`` models uses it (``orchestrate watch`` with no names: every model)."""
    try:
        policy = snap.policies.watch
    except RepositoryCorrupt:
        return None
    found = standing(Budget.of(policy, sharers),
                     since(last_switch(snap.journal), time.time() if now_unix is None else now_unix))
    return ProbeBudget(found.phase, found.share, found.steady, round(found.bake_left_s, 1), max(1, sharers))


def journal_gap(journaled: tuple[int, ...], served: int | None) -> str | None:
    """The journal's last switch says one version serves, config.pbtxt another: records the watcher could
    not write yet (a full disk; it writes them when it can), or a config edited by hand."""
    if not journaled or journaled[-1] == served:
        return None
    return (f"the journal's last switch served v{journaled[-1]}, config.pbtxt serves v{served}: records not "
            f"written yet (disk full?) or config.pbtxt edited by hand")


def statuses(ctx: Context, model: str | None) -> list[ModelStatus]:
    managed = ctx.repository.models()  # listed once: each name's kind reads its config
    names = [model] if model else managed
    return [model_status(ctx, ctx.repository.model(name), sharers=len(managed)) for name in names]


@dataclass(frozen=True)
class VersionDescription:
    """``describe``: one version, everything the orchestrator knows of it."""

    model: str
    version: int
    status: str
    serving: bool
    resident: bool
    fallback: bool  # the rollback target now
    triton_state: str | None  # None when Triton did not answer
    meta: dict[str, object]  # meta.yaml as filed (its own verification claims left out: never evidence)
    attestation: dict[str, object]  # the orchestrator's records: verification, golden metrics, shadow, loads
    journal: list[dict[str, object]]  # every record that names the version, oldest first
    labels: list[str] = field(default_factory=list)  # version labels pointing at it

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def describe(ctx: Context, model: str | None, version: int) -> VersionDescription:
    store = ctx.store(model)
    snap = store.snapshot()
    snap.require(version)
    meta, attestation = snap.meta(version), snap.attestation(version)
    try:
        entry = ctx.triton.states(store.name).get(version)
        triton_state: str | None = entry.state.value if entry is not None else ""
    except TritonError:
        triton_state = None
    named = [r for r in store.journal.read().records
             if version in (r.from_version, r.to_version) or r.details.get("judged") == version]
    meta_doc = asdict(meta)
    meta_doc.pop("verification", None)
    return VersionDescription(
        model=store.name, version=version, status=attestation.verification.status.value,
        serving=snap.served == version, resident=version in snap.resident, fallback=snap.last_verified() == version,
        triton_state=triton_state, meta=meta_doc, attestation=asdict(attestation),
        journal=[json.loads(r.to_json()) for r in named],
        labels=[name for name, v in read_labels(store.state).items() if v == version])
