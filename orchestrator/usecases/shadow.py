"""Use cases: start, observe and stop a shadow run of one version of one model.

A shadow run and a promote both use the ``<model>__candidate`` entry, so they exclude each
other: ``start`` runs under the model's lock and refuses while a run is active; promote is
expected to call ``refuse_while_shadowing`` (and repair must not drop the entry of an active
run: ``active_shadow``). The run itself holds no lock; ``stop`` takes it again to unload the
candidate, record the verdict in the journal and, once Triton has let go of the version's
folder, in the version's ``meta.yaml``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from orchestrator.core.shadow_gate import META_KEY, GateVerdict, load_shadow_policy, shadow_gate, shadow_record
from orchestrator.core.shadow_stats import ShadowReport
from orchestrator.daemons.shadow_worker import ShadowWorker, initial_state
from orchestrator.errors import LoadFailed, TritonError, UsageError
from orchestrator.core.journal import FAILED, STEP, SUCCEEDED, Record, new_op_id, now_iso
from orchestrator.store.lock import model_lock
from orchestrator.store.metafile import META_FILE, write_meta
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.store.shadow_state import (
    WORKER_LOG,
    ShadowConfig,
    ShadowState,
    observed,
    pid_alive,
    read_state,
    refuse_while_shadowing,
    shadow_dir,
    write_state,
)
from orchestrator.triton.traces import TRACING_OFF, TraceTail, trace_location
from orchestrator.usecases.operations import Orchestrator

log = logging.getLogger(__name__)

MAX_SAMPLE_RATE = 0.25
DEFAULT_SAMPLE_RATE = 0.001  # measured: 0.01 cost +28% production p99 on 2 cores, 0.001 within noise
WORKER_START_S = 15.0
WORKER_STOP_S = 10.0


@dataclass(frozen=True)
class StopResult:
    state: ShadowState
    report: ShadowReport
    verdict: GateVerdict
    meta_written: bool  # False when the version is resident in production (its folder must not change)


def start_shadow(orch: Orchestrator, model: str | None, version: int, sample_rate: float = DEFAULT_SAMPLE_RATE,
                 min_samples: int | None = None, trace_dir: Path | None = None, detached: bool = True,
                 registry: CollectorRegistry | None = None, **tuning: float | int | None) -> ShadowWorker | None:
    """Load the candidate, then start the worker (a detached process, or in this process for tests)."""
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        # Measured: Triton 2.51 tracing TENSORS on every request under 4-thread load segfaulted
        # (signal 11 in TRITONBACKEND_ResponseSend); production must never pay that.
        raise UsageError(f"--sample-rate must be within (0, {MAX_SAMPLE_RATE}], not {sample_rate}")
    if min_samples is not None and min_samples < 1:
        raise UsageError("--min-samples must be >= 1")
    store = orch.repository.model(orch.resolve_model(model))
    with model_lock(store.state, store.name, orch.settings.lock_timeout_s):
        refuse_while_shadowing(store)
        orch._repair(store)  # an interrupted promote's candidate entry goes before ours is written
        store.require(version)
        if version == store.served():
            raise UsageError(f"{store.name} v{version} already serves: there is nothing to compare it with")
        orch.triton.require_live()
        folder, prefix = trace_location(orch.triton, store.name, trace_dir, "shadow traffic")
        config = ShadowConfig(model=store.name, version=version, triton_url=orch.triton.url, trace_dir=str(folder),
                              trace_prefix=prefix, sample_rate=sample_rate, min_samples=min_samples,
                              **{k: v for k, v in tuning.items() if v is not None})  # type: ignore[arg-type]
        op = new_op_id()
        _, candidate_config = store.write_candidate_entry(version)
        try:
            orch.triton.load(candidate_name(store.name), to_json(candidate_config))
        except LoadFailed:
            orch._drop_candidate(store, quiet=True)
            raise
        state = initial_state(config, now_iso(), op)
        write_state(store.state, state)
        store.journal.append(Record(action="shadow", result=STEP, op=op, actor=orch.settings.actor,
                                    from_version=store.served(), to_version=version,
                                    details={"step": "started", "sample_rate": sample_rate}))
        if not detached:
            return ShadowWorker(config, store.state, registry, orch.settings.admin_key).start()
        _spawn(store, state)
        return None


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
        if current is not None and current.phase == "running":
            return
        if (current is not None and current.phase == "failed") or process.poll() is not None:
            break
        time.sleep(0.1)
    current = observed(read_state(store.state) or state)
    if current.phase != "running":
        raise TritonError(f"the shadow worker did not start: {current.reason or 'see ' + str(log_path)}")


def shadow_status(orch: Orchestrator, model: str | None) -> ShadowState:
    store = orch.repository.model(orch.resolve_model(model))
    state = read_state(store.state)
    if state is None:
        raise UsageError(f"{store.name} has never been shadowed")
    return observed(state)


def stop_shadow(orch: Orchestrator, model: str | None, worker: ShadowWorker | None = None) -> StopResult:
    """End the run: worker, tracing, candidate; then judge it and record the verdict."""
    store = orch.repository.model(orch.resolve_model(model))
    with model_lock(store.state, store.name, orch.settings.lock_timeout_s):
        state = read_state(store.state)
        if state is None or state.phase == "stopped":
            raise UsageError(f"{store.name} has no shadow run to stop")
        if worker is not None:
            worker.stop()
        elif state.pid is not None:
            _terminate(state.pid)
        state = observed(read_state(store.state) or state)
        try:
            orch.triton.update_trace_settings(store.name, TRACING_OFF)  # also when the worker died
        except TritonError as exc:
            log.warning("could not turn tracing off for %s: %s", store.name, exc)
        orch._drop_candidate(store)  # waits until Triton has let go of the linked version folder
        TraceTail(Path(state.config.trace_dir), state.config.trace_prefix, store.name).remove_all()
        report = replace(state.shadow_report(), phase="failed" if state.phase == "failed" else "stopped",
                         reason=state.reason)
        policy = load_shadow_policy(store.state)
        if state.config.min_samples is not None:
            policy = replace(policy, min_samples=state.config.min_samples)
        verdict = shadow_gate(report, policy)
        version = state.config.version
        finished = now_iso()
        meta_written = version not in store.resident()
        if meta_written:
            meta = store.meta(version)
            record = shadow_record(report, verdict, finished)
            write_meta(store.require(version) / META_FILE, replace(meta, extra={**meta.extra, META_KEY: record}))
        store.journal.append(Record(
            action="shadow", result=SUCCEEDED if verdict.passed else FAILED, op=state.op or new_op_id(),
            actor=orch.settings.actor, from_version=store.served(), to_version=version, reason=verdict.reason,
            details={"outcome": verdict.outcome.value, "tensor": verdict.tensor, "metric": verdict.metric,
                     "compared": report.compared, "dropped": report.dropped,
                     "candidate_errors": report.candidate_errors, "meta_written": meta_written}))
        final = replace(state, phase="stopped", report=report.to_dict(),
                        verdict={"outcome": verdict.outcome.value, "reason": verdict.reason,
                                 "tensor": verdict.tensor, "metric": verdict.metric, "finished_at": finished})
        write_state(store.state, final)
        return StopResult(final, report, verdict, meta_written)


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
