"""A shadow run's persisted state: ``<state>/<model>/shadow/state.json``, replaced atomically.

Written by ``shadow start``, refreshed by the worker about once a second (the heartbeat
carries the latest report), and closed by ``shadow stop``. A reader judges liveness from
the worker's pid and heartbeat, so a worker that died still shows as failed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.core.shadow_stats import ShadowPhase, ShadowReport
from orchestrator.errors import Busy
from orchestrator.store.atomic import write_atomic
from orchestrator.store.repository import ModelStore, candidate_name

SHADOW_DIR = "shadow"
STATE_FILE = "state.json"
WORKER_LOG = "worker.log"
STALE_AFTER_S = 15.0  # a worker that has not written for this long is presumed dead



@dataclass(frozen=True)
class ShadowConfig:
    """What the worker needs; stored in the state so a detached worker reads it from disk."""

    model: str
    version: int
    triton_url: str
    trace_dir: str
    trace_prefix: str = "trace.json"
    sample_rate: float = 0.01
    min_samples: int | None = None  # overrides the policy's for this run
    queue_size: int = 64
    replay_timeout_s: float = 2.0
    max_consecutive_errors: int = 3
    metrics_port: int | None = None
    # The ensemble clients call when the model serves through one (``ModelSnapshot.route``): traced, and
    # replayed to ``<route>__candidate``; "" when clients call the model itself.
    route: str = ""

    @property
    def traced(self) -> str:
        """The entry whose requests are traced: what clients call."""
        return self.route or self.model


@dataclass(frozen=True)
class ShadowState:
    config: ShadowConfig
    phase: ShadowPhase
    started_at: str
    op: str = ""  # journal operation id
    pid: int | None = None  # the detached worker; None when it runs inside another process
    # time.monotonic() of the worker's last write: the system-wide clock since boot, which no NTP step or
    # operator's `date` moves (a wall-clock heartbeat would look stale, or fresh forever, after a jump)
    heartbeat: float = 0.0
    reason: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)  # filled by stop

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", ShadowPhase(self.phase))

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "phase": self.phase.value}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShadowState:
        raw = json.loads(text)
        return cls(**{**raw, "config": ShadowConfig(**raw["config"])})

    def shadow_report(self) -> ShadowReport:
        if self.report:
            return ShadowReport.from_dict(self.report)
        return ShadowReport(self.config.model, self.config.version, phase=self.phase, reason=self.reason)


def initial_state(config: ShadowConfig, started_at: str, op: str) -> ShadowState:
    return ShadowState(config=config, phase=ShadowPhase.STARTING, started_at=started_at, op=op,
                       heartbeat=time.monotonic())


def shadow_dir(state_folder: Path) -> Path:
    return state_folder / SHADOW_DIR


def read_state(state_folder: Path) -> ShadowState | None:
    path = shadow_dir(state_folder) / STATE_FILE
    try:
        return ShadowState.from_json(path.read_text())
    except FileNotFoundError:
        return None


def write_state(state_folder: Path, state: ShadowState) -> None:
    folder = shadow_dir(state_folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / STATE_FILE, state.to_json())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def observed(state: ShadowState, now: float | None = None) -> ShadowState:
    """The state as a reader should see it: a running worker that is gone or silent has failed."""
    if not state.phase.expects_worker:
        return state
    now = time.monotonic() if now is None else now
    if state.pid is not None and not pid_alive(state.pid):
        reason = f"the shadow worker (pid {state.pid}) exited without closing the run"
    elif state.heartbeat and now < state.heartbeat:
        reason = "the shadow worker's last heartbeat is from before this machine started"
    elif state.heartbeat and now - state.heartbeat > STALE_AFTER_S:
        reason = f"no heartbeat from the shadow worker for {now - state.heartbeat:.0f}s"
    else:
        return state
    report = dict(state.report, phase=ShadowPhase.FAILED.value, reason=reason) if state.report else {}
    return replace(state, phase=ShadowPhase.FAILED, reason=reason, report=report)


def active_shadow(store: ModelStore) -> ShadowState | None:
    """The model's shadow run while its candidate entry is (or may be) loaded, else None."""
    state = read_state(store.state)
    if state is None:
        return None
    state = observed(state)
    return state if state.phase.holds_candidate else None


def refuse_while_shadowing(store: ModelStore) -> None:
    """For promote: the candidate entry belongs to a shadow run until ``shadow stop``."""
    state = active_shadow(store)
    if state is not None:
        raise Busy(f"{store.name} is shadowing v{state.config.version} ({state.phase.value}) in "
                   f"{candidate_name(store.name)}: run `orchestrate shadow stop {store.name}` first")
