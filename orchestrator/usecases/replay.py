"""Recorded production inputs: the promote gate that replays them, and ``orchestrate replay``'s verbs.

The gate (``replay_verdict``, called by ``candidate.check_candidate`` once the golden set passed)
sends the newest recorded inputs to the candidate and to the served route and lets
``core/replay_gate.py`` compare the answers. The verbs set recording up: for a model behind an
ensemble, the ensemble's first step's config.pbtxt (written atomically, journaled, then that
step reloaded: Triton loads the new instance before it retires the old one); for a model called
directly, its policy.yaml says it (the drift sampler records), so the verbs only say what to write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.core.ensemble import Ensemble, Step
from orchestrator.core.golden import GoldenSet
from orchestrator.core.journal import Action, Result, new_op_id
from orchestrator.core.policy import Drift, ReplayPolicy
from orchestrator.core.replay_gate import compare, replay_gate, unseen
from orchestrator.core.verdict import Outcome, Verdict
from orchestrator.errors import OrchestratorError, TritonError, TritonUnreachable, UsageError
from orchestrator.store.atomic import write_atomic
from orchestrator.store.modelconfig import CONFIG_FILE
from orchestrator.store.policyfile import POLICY_FILE
from orchestrator.store.replay import (
    RingStatus,
    StepRecording,
    clear_ring,
    read_step,
    replay_dir_for,
    ring_folder,
    ring_status,
    step_recording,
    write_golden_skip_list,
    write_recording,
)
from orchestrator.store.replay_ring import read_ring
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import OWN_REQUEST
from orchestrator.usecases.context import Context

log = logging.getLogger(__name__)

RING_MODULE = "replay_ring.py"  # what a recording step ships in its version folder


@dataclass(frozen=True)
class ReplayStatus:
    model: str
    folder: Path
    source: str  # "tracing", "step <name>", or "" when nothing records
    recording: bool
    ring: RingStatus
    max_bytes: int | None  # the bound the recorder keeps (None: nothing records)
    every_n: int | None
    note: str = ""  # what to do, or why nothing records


# --- the promote gate ---------------------------------------------------------------------

def replay_verdict(ctx: Context, store: ModelStore, snap: ModelSnapshot, target: str, served_target: str,
                   served_version: int | None, policy: ReplayPolicy, outputs: list[str],
                   golden: GoldenSet | None = None) -> Verdict | None:
    """The candidate (``target``) and the served route answer the newest recorded inputs; None when replay is
    off for the model. Inconclusive with too few (failed with ``require``), failed when they disagree."""
    if not gate_on(store, snap, policy):
        return None
    if snap.served is None:
        return Verdict(Outcome.INCONCLUSIVE, "replay inconclusive: no served version to compare with")
    problems: list[str] = []
    records = read_ring(ring_folder(store.state), policy.limit, problems)
    for problem in problems:
        log.warning("%s: recorded input skipped: %s", store.name, problem)
    records = [_client_names(snap.route, r) for r in records]
    names = {t.name for t in snap.client_contract.inputs}
    usable = [r for r in records if set(r) == names]  # recorded before the contract changed: not these inputs
    fresh = unseen(usable, golden.inputs if golden is not None else None)
    skipped = len(problems) + len(records) - len(usable) + fresh.golden + fresh.repeated
    ctx.progress(f"replaying {len(fresh.records)} recorded production inputs on the candidate and on served "
                 f"v{snap.served}")
    pairs = []
    for record in fresh.records:
        try:
            served = ctx.triton.infer(served_target, record, outputs, version=served_version,
                                      request_id=OWN_REQUEST).outputs
        except TritonUnreachable:
            raise
        except TritonError as exc:  # production itself cannot answer it: nothing to compare with
            log.warning("%s: recorded input skipped: the served version answered %s", store.name, exc)
            skipped += 1
            continue
        try:
            answered = ctx.triton.infer(target, record, outputs).outputs
        except TritonUnreachable:
            raise
        except TritonError as exc:
            return Verdict(Outcome.FAILED, f"replay of recorded production inputs: the candidate failed on one that "
                                           f"the served version answers: {exc}", metric="replay",
                           metrics={"replay_samples": float(len(pairs))})
        pairs.append((answered, served))
    verdict = replay_gate(compare(pairs, outputs, skipped), policy)
    ctx.progress(verdict.reason)
    if verdict.outcome is Outcome.INCONCLUSIVE:
        log.warning("%s: %s", store.name, verdict.reason)
    return verdict


def gate_on(store: ModelStore, snap: ModelSnapshot, policy: ReplayPolicy) -> bool:
    """The policy turns replay on, or the model's ensemble step records into its ring."""
    if policy.enabled:
        return True
    route = snap.route
    if route is None:
        return False
    step = _first_step(route)
    if step.model == store.name:
        return False
    recording = step_recording(read_step(store.folder.parent / step.model)[1])
    return recording is not None and _same(recording.folder(store.folder.parent / step.model),
                                           ring_folder(store.state))


def _client_names(route: Ensemble | None, record: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step records its own input names: as the ensemble's (what clients send and the route takes)."""
    if route is None:
        return record
    step = _first_step(route)
    own_to_client = dict(step.inputs)
    return {own_to_client.get(name, name): value for name, value in record.items()}


def _first_step(route: Ensemble) -> Step:
    """The step that takes what clients send (Triton runs steps by data dependency, not listing order)."""
    try:
        return route.order()[0]
    except (ValueError, IndexError):
        return route.steps[0]


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# --- the verbs ----------------------------------------------------------------------------

def replay_status(ctx: Context, model: str | None) -> ReplayStatus:
    store = ctx.store(model)
    return _status(store, store.snapshot())


def _status(store: ModelStore, snap: ModelSnapshot) -> ReplayStatus:
    folder = ring_folder(store.state)
    ring = ring_status(folder)
    route = snap.route
    policy = snap.policies.replay
    if route is None:
        drift = snap.policies.watch.rules.get("drift")
        sampling = isinstance(drift, Drift) and drift.sampling
        if policy.enabled and sampling:
            return ReplayStatus(store.name, folder, "tracing", True, ring, policy.max_bytes, policy.every_n,
                                "recorded by `orchestrate watch` from the drift sampler's traces")
        return ReplayStatus(store.name, folder, "", False, ring, None, None, _direct_hint(store, policy, sampling))
    step = _recording_step(store, route)
    recording = step_recording(read_step(store.folder.parent / step.model)[1])
    if recording is None:
        return ReplayStatus(store.name, folder, "", False, ring, None, None,
                            f"`orchestrate replay enable {store.name}` records in the {route.name} ensemble's step "
                            f"{step.model}")
    where = recording.folder(store.folder.parent / step.model)
    note = "" if _same(where, folder) else f"{step.model} records into {where}, not into {folder}"
    return ReplayStatus(store.name, folder, f"step {step.model}", not note, ring, recording.max_bytes,
                        recording.every_n, note)


def _direct_hint(store: ModelStore, policy: ReplayPolicy, sampling: bool) -> str:
    missing = [text for text, ok in (("`replay: {enabled: true}`", policy.enabled),
                                     ("`watch: {rules: {drift: {samples_per_s: 2}}}`", sampling)) if not ok]
    return (f"{store.name} is called directly: it records what the drift sampler traces; set "
            f"{' and '.join(missing)} in {store.state / POLICY_FILE} and restart `orchestrate watch`")


def _recording_step(store: ModelStore, route: Ensemble) -> Step:
    step = _first_step(route)
    if step.model == store.name:
        raise UsageError(f"{store.name} is the first step of the {route.name} ensemble: no step before it can record "
                         f"what clients send; record through the drift sampler instead ({POLICY_FILE}: "
                         f"replay.enabled and drift.samples_per_s)")
    return step


def enable_replay(ctx: Context, model: str | None, max_mb: float | None = None,
                  every_n: int | None = None) -> ReplayStatus:
    """Record what clients send: in the ensemble's first step (config written, journaled, step reloaded)."""
    store = ctx.store(model)
    with ctx.locked(store):
        snap = store.snapshot()
        route = snap.route
        policy = snap.policies.replay
        if route is None:
            status = _status(store, snap)
            if max_mb is not None or every_n is not None:
                raise UsageError(f"{store.name} records through the drift sampler: set replay.max_mb and "
                                 f"replay.every_n in {store.state / POLICY_FILE}")
            if not status.recording:
                raise UsageError(status.note)
            return status
        if max_mb is not None and not (max_mb > 0 and int(max_mb * 2**20) >= 1):
            raise UsageError(f"--max-mb must be > 0, got {max_mb:g}")
        if every_n is not None and every_n < 1:
            raise UsageError(f"--every must be >= 1, got {every_n}")
        step = _recording_step(store, route)
        step_folder = store.folder.parent / step.model
        _require_ring_module(step_folder, step.model)
        wanted = StepRecording(replay_dir_for(step_folder, ring_folder(store.state)),
                               int(max_mb * 2**20) if max_mb is not None else policy.max_bytes,
                               every_n if every_n is not None else policy.every_n)
        return _set_recording(ctx, store, snap, step, wanted)


def disable_replay(ctx: Context, model: str | None) -> ReplayStatus:
    """Stop recording (the ring stays: ``clear`` deletes it)."""
    store = ctx.store(model)
    with ctx.locked(store):
        snap = store.snapshot()
        route = snap.route
        if route is None:
            status = _status(store, snap)
            if snap.policies.replay.enabled:
                raise UsageError(f"{store.name} records through the drift sampler: set `replay: {{enabled: false}}` "
                                 f"in {store.state / POLICY_FILE} and restart `orchestrate watch`")
            return status
        return _set_recording(ctx, store, snap, _recording_step(store, route), None)


def _set_recording(ctx: Context, store: ModelStore, snap: ModelSnapshot, step: Step,
                   wanted: StepRecording | None) -> ReplayStatus:
    step_folder = store.folder.parent / step.model
    before, config = read_step(step_folder)
    if wanted is not None:  # refreshed each time: a changed golden set is listed again by enabling again
        write_golden_skip_list(snap, {client: own for own, client in step.inputs})
    if step_recording(config) == wanted:
        return _status(store, snap)  # already so: no reload
    ctx.triton.require_live()
    op = new_op_id()
    details: dict[str, object] = {"step": step.model, "recording": wanted is not None}
    if wanted is not None:
        details.update(replay_dir=wanted.replay_dir, max_bytes=wanted.max_bytes, every_n=wanted.every_n)
    what = "on" if wanted is not None else "off"
    snap = ctx.record(store, snap, Action.REPLAY, Result.STARTED, op, details=details)
    try:
        if wanted is not None:
            wanted.folder(step_folder).mkdir(parents=True, exist_ok=True)
        write_recording(step_folder, wanted)
        ctx.progress(f"reloading {step.model} with recording {what}")
        ctx.triton.load(step.model)
    except (OrchestratorError, OSError) as exc:
        _restore(step_folder, before)
        ctx.record(store, snap, Action.REPLAY, Result.FAILED, op, reason=f"recording {what} in {step.model}: {exc}",
                   details=details)
        raise
    snap = ctx.record(store, snap, Action.REPLAY, Result.SUCCEEDED, op,
                      reason=f"recording of production inputs {what} in step {step.model}", details=details)
    return _status(store, snap)


def _restore(step_folder: Path, text: str) -> None:
    """The step's config as it was: Triton kept serving the old one (a load is all or nothing)."""
    try:
        write_atomic(step_folder / CONFIG_FILE, text)
    except OSError as exc:
        log.error("%s: could not restore its config.pbtxt (%s): it says what Triton does not run", step_folder, exc)


def _require_ring_module(step_folder: Path, step: str) -> None:
    versions = [p for p in step_folder.iterdir() if p.is_dir() and p.name.isdigit()]
    if not any((v / RING_MODULE).is_file() for v in versions):
        raise UsageError(f"step {step} cannot record: none of its version folders ships {RING_MODULE} "
                         f"(orchestrator/store/{RING_MODULE}, imported by the step's model.py)")


def clear_replay(ctx: Context, model: str | None) -> tuple[ReplayStatus, int, int]:
    """Delete every recorded input of the model, journaled; (status after, records, bytes) removed."""
    store = ctx.store(model)
    with ctx.locked(store):
        snap = store.snapshot()
        folder = ring_folder(store.state)
        records, freed = clear_ring(folder)
        snap = ctx.record(store, snap, Action.REPLAY, Result.SUCCEEDED, new_op_id(),
                          reason=f"recorded production inputs deleted: {records} records, {freed} bytes",
                          details={"cleared": records, "bytes": freed})
        return _status(store, snap), records, freed
