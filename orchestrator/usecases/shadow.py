"""Use cases: start, observe and stop a shadow run of one version of one model.

A shadow run and a promote both use the ``<model>__candidate`` entry, so they exclude each
other: ``start`` runs under the model's lock and refuses while a run is active; promote calls
``refuse_while_shadowing`` (and repair must not drop the entry of an active run:
``active_shadow``). The run itself holds no lock; ``stop`` takes it again to unload the
candidate, record the verdict in the journal and in the version's attestation.

The worker is a detached process (``daemons/shadow_main.py``) unless the caller hands in a
way to run it (``run_worker``: tests run it in their own process).

A model clients reach through an ensemble (``ModelSnapshot.route``) is shadowed through it, as
``candidate.py`` judges it: ``<route>__candidate`` (its step of the model sent to
``<model>__candidate``) is loaded too, the ensemble is traced, and ``drop_candidate`` unloads
and removes both, so stop and repair need nothing more.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from orchestrator.core.ensemble import Ensemble
from orchestrator.core.journal import Action, Result, new_op_id, now_iso
from orchestrator.core.shadow_gate import shadow_gate, shadow_record
from orchestrator.core.shadow_stats import ShadowPhase, ShadowReport
from orchestrator.core.verdict import Verdict
from orchestrator.errors import LoadFailed, TritonError, UsageError
from orchestrator.store.modelconfig import to_json
from orchestrator.store.policyfile import read_policies
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.store.shadow_state import (
    WORKER_LOG,
    ShadowConfig,
    ShadowState,
    initial_state,
    observed,
    pid_alive,
    read_state,
    refuse_while_shadowing,
    shadow_dir,
    write_state,
)
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.traces import TRACING_OFF, TraceTail, trace_location
from orchestrator.usecases.candidate_entry import drop_candidate
from orchestrator.usecases.context import Context
from orchestrator.usecases.repair import repair

log = logging.getLogger(__name__)

MAX_SAMPLE_RATE = 0.25
# Measured on 2 cores (scripts/bench shadow, --per-sample): a traced classifier request costs Triton about
# 0.6 ms of CPU more, a sample the worker about 0.9 ms, its replay Triton 0.35 ms: at 0.001 of 2,000 requests/s
# the whole run is about 0.3% of the two cores, below what latency windows resolve there. A traced ensemble
# request writes every step's tensors too (the sample detector: 287 KiB, +10 ms of CPU against 6.3 ms for the
# request).
DEFAULT_SAMPLE_RATE = 0.001
WORKER_START_S = 15.0
WORKER_STOP_S = 10.0

W = TypeVar("W")


class RunningWorker(Protocol):
    def stop(self, timeout_s: float = ...) -> ShadowReport: ...


@dataclass(frozen=True)
class StopResult:
    state: ShadowState
    report: ShadowReport
    verdict: Verdict


def start_shadow(ctx: Context, model: str | None, version: int, sample_rate: float = DEFAULT_SAMPLE_RATE,
                 min_samples: int | None = None, trace_dir: Path | None = None,
                 run_worker: Callable[[ShadowConfig, Path, str | None], W] | None = None,
                 **tuning: float | int | None) -> W | None:
    """Load the candidate, then start the worker; returns what ``run_worker`` returned (None: detached)."""
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        # Measured: Triton 2.51 tracing TENSORS on every request under 4-thread load segfaulted
        # (signal 11 in TRITONBACKEND_ResponseSend); production must never pay that.
        raise UsageError(f"--sample-rate must be within (0, {MAX_SAMPLE_RATE}], not {sample_rate}")
    if min_samples is not None and min_samples < 1:
        raise UsageError("--min-samples must be >= 1")
    store = ctx.store(model)
    with ctx.locked(store):
        refuse_while_shadowing(store)
        snap = repair(ctx, store).snapshot  # an interrupted promote's candidate entry goes before ours is written
        snap.require(version)
        if version == snap.served:
            raise UsageError(f"{store.name} v{version} already serves: there is nothing to compare it with")
        ctx.triton.require_live()
        route = snap.route  # PolicyViolation when the repository leaves it ambiguous
        traced = route.name if route is not None else store.name
        folder, prefix = trace_location(ctx.triton, traced, trace_dir, "shadow traffic")
        config = ShadowConfig(model=store.name, version=version, triton_url=ctx.triton.url, trace_dir=str(folder),
                              trace_prefix=prefix, sample_rate=sample_rate, min_samples=min_samples,
                              route=route.name if route is not None else "",
                              **{k: v for k, v in tuning.items() if v is not None})  # type: ignore[arg-type]
        op = new_op_id()
        _load_candidate(ctx, store, snap, version, route)
        state = initial_state(config, now_iso(), op)
        write_state(store.state, state)
        ctx.record(store, snap, Action.SHADOW, Result.STEP, op, from_version=snap.served, to_version=version,
                   details={"step": "started", "sample_rate": sample_rate,
                            **({"route": route.name} if route is not None else {})})
        if run_worker is not None:
            return run_worker(config, store.state, ctx.settings.admin_key)
        _spawn(store, state)
        return None


def _load_candidate(ctx: Context, store: ModelStore, snap: ModelSnapshot, version: int, route: Ensemble | None) -> None:
    """``<model>__candidate``, then the candidate route through it; on a failed load neither stays."""
    _, candidate_config = store.write_candidate_entry(snap, version)
    route_config = store.write_candidate_route(route)[1] if route is not None else None
    try:
        ctx.triton.load(candidate_name(store.name), to_json(candidate_config))
        if route is not None and route_config is not None:
            ctx.triton.load(candidate_name(route.name), to_json(route_config))
    except LoadFailed:
        drop_candidate(ctx, store, quiet=True)
        raise


def _spawn(store: ModelStore, state: ShadowState) -> None:
    log_path = shadow_dir(store.state) / WORKER_LOG
    with log_path.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "orchestrator.daemons.shadow_main", str(store.state)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # outlives this command, ignores its Ctrl-C
    write_state(store.state, replace(state, pid=process.pid))
    deadline = time.monotonic() + WORKER_START_S
    while time.monotonic() < deadline:  # return once tracing is on, or with the worker's reason
        current = read_state(store.state)
        if current is not None and current.phase == ShadowPhase.RUNNING:
            return
        if (current is not None and current.phase == ShadowPhase.FAILED) or process.poll() is not None:
            break
        time.sleep(0.1)
    current = observed(read_state(store.state) or state)
    if current.phase != ShadowPhase.RUNNING:
        raise TritonError(f"the shadow worker did not start: {current.reason or 'see ' + str(log_path)}")


def shadow_status(ctx: Context, model: str | None) -> ShadowState:
    store = ctx.store(model)
    state = read_state(store.state)
    if state is None:
        raise UsageError(f"{store.name} has never been shadowed")
    return observed(state)


def stop_shadow(ctx: Context, model: str | None, worker: RunningWorker | None = None) -> StopResult:
    """End the run: worker, tracing, candidate; then judge it and record the verdict."""
    store = ctx.store(model)
    with ctx.locked(store):
        state = read_state(store.state)
        if state is None or state.phase == ShadowPhase.STOPPED:
            raise UsageError(f"{store.name} has no shadow run to stop")
        before = observed(state)  # judged before the stop: once stopped, a detached worker is gone by design
        if worker is not None:
            worker.stop()
        elif before.pid is not None and before.phase.expects_worker:
            _terminate(before.pid)
        state = read_state(store.state) or state  # the worker's last report
        if before.phase is ShadowPhase.FAILED:
            state = replace(state, phase=ShadowPhase.FAILED, reason=state.reason or before.reason)
        traced = state.config.traced
        try:
            ctx.triton.update_trace_settings(traced, TRACING_OFF)  # also when the worker died
        except TritonError as exc:
            log.warning("could not turn tracing off for %s: %s", traced, exc)
        drop_candidate(ctx, store)  # the candidate route too; waits until Triton has let go of the version folder
        TraceTail(Path(state.config.trace_dir), state.config.trace_prefix, traced,
                  nested=bool(state.config.route)).remove_all()
        phase = ShadowPhase.FAILED if state.phase is ShadowPhase.FAILED else ShadowPhase.STOPPED
        report = replace(state.shadow_report(), phase=phase, reason=state.reason)
        policy = read_policies(store.state).shadow
        if state.config.min_samples is not None:
            policy = replace(policy, min_samples=state.config.min_samples)
        verdict = shadow_gate(report, policy)
        version = state.config.version
        finished = now_iso()
        snap = store.record_shadow(store.snapshot(), version, shadow_record(report, verdict, finished))
        ctx.record(store, snap, Action.SHADOW, Result.SUCCEEDED if verdict.passed else Result.FAILED,
                   state.op or new_op_id(), from_version=snap.served, to_version=version, reason=verdict.reason,
                   details={"outcome": verdict.outcome.value, "tensor": verdict.tensor, "metric": verdict.metric,
                            "compared": report.compared, "dropped": report.dropped,
                            "candidate_errors": report.candidate_errors})
        final = replace(state, phase=ShadowPhase.STOPPED, report=report.to_dict(),
                        verdict={"outcome": verdict.outcome.value, "reason": verdict.reason,
                                 "tensor": verdict.tensor, "metric": verdict.metric, "finished_at": finished})
        write_state(store.state, final)
        return StopResult(final, report, verdict)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + WORKER_STOP_S
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    log.warning("shadow worker %d ignored SIGTERM; killing it", pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
