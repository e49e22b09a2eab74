"""The fleet controller's Prometheus series, on a registry passed in (one per test, one per controller).

``refresh`` runs on the store thread after every step (``ControllerService`` calls it as its
``on_tick``): one read of the devices, one of the rollouts' rows, and the assignments of the
rollouts shown in detail, which are read again only when the controller wrote them since
(their ``updated_at``). The series it computes replace the previous ones at once, so a scrape
sees one step, never half of two, and a series whose rollout is no longer shown is gone.

Cardinality stays bounded: every rollout keeps its phase (seven series), but only the active
ones (not final, or final with devices still reverting) and the last ``keep_finished`` finished
ones export their wave, devices per state, gates and devices left on the version. Device ids
are never labels: report age is a few quantiles over the fleet.

    orchestrator_fleet_devices{state}                          online | offline
    orchestrator_fleet_device_last_report_age_seconds{quantile}   0.5 0.9 0.99 1 (+Inf: never reported)
    orchestrator_fleet_rollout_phase{rollout, model, phase}    1 for the phase it is in, 0 for the others
    orchestrator_fleet_rollout_wave{rollout} / _waves{rollout} current wave (1-based) / waves of its plan
    orchestrator_fleet_rollout_last_step_timestamp_seconds{rollout}  last write of it (final: when it finished)
    orchestrator_fleet_rollout_devices{rollout, state}         every DeviceState
    orchestrator_fleet_gate_value / _sample{rollout, gate}     the last assessment (no value: no sample)
    orchestrator_fleet_gate_bound{rollout, gate, bound}        min | max of the gate in the plan
    orchestrator_fleet_gate_verdict{rollout, gate, verdict}    1 for its verdict, 0 for the others
    orchestrator_fleet_left_on_version{rollout}                told to leave the version, still serving it
    orchestrator_fleet_blocks                                  blocks in force
    orchestrator_fleet_messages_total, _steps_total, _step_seconds   the service's counters and step time
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.errors import FleetError, UsageError
from orchestrator.fleet import codec
from orchestrator.fleet.gates import Verdict
from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.rollout import DeviceState, Phase, Rollout
from orchestrator.fleet.store import DeviceRecord, FleetStore

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from orchestrator.fleet.controller import Controller

log = logging.getLogger(__name__)

KEEP_FINISHED = 10
AGE_QUANTILES = (0.5, 0.9, 0.99, 1.0)
# As `fleet rollout status` counts left_on_version (status.py): told to revert, reverted, or skipped by a block.
LEAVING = (DeviceState.REVERTING, DeviceState.REVERTED, DeviceState.SKIPPED)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# name -> (help, label names): every family the collector exports, present (without samples) from the start.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "orchestrator_fleet_devices": ("Enrolled devices by presence (the broker's last will: offline)", ("state",)),
    "orchestrator_fleet_device_last_report_age_seconds": (
        "Seconds since devices last reported, as quantiles over the enrolled devices (quantile 0.9 over 900: "
        "more than a tenth of the fleet silent for 15 minutes; +Inf: a device that never reported)", ("quantile",)),
    "orchestrator_fleet_rollout_phase": ("1 for the phase each rollout is in, 0 for the others",
                                         ("rollout", "model", "phase")),
    "orchestrator_fleet_rollout_wave": ("The wave a rollout is in, counted from 1", ("rollout",)),
    "orchestrator_fleet_rollout_waves": ("Waves in a rollout's plan", ("rollout",)),
    "orchestrator_fleet_rollout_last_step_timestamp_seconds": (
        "Unix time the controller last wrote a rollout (each step while it is active; a finished one: when it "
        "finished)", ("rollout",)),
    "orchestrator_fleet_rollout_devices": ("A rollout's devices in each state", ("rollout", "state")),
    "orchestrator_fleet_gate_value": ("Each gate's value at the rollout's last step (none while nothing was "
                                      "measured)", ("rollout", "gate")),
    "orchestrator_fleet_gate_bound": ("Each gate's bound in the rollout's plan: min or max of its value (a "
                                      "comparison with the control group: max of the ratio)",
                                      ("rollout", "gate", "bound")),
    "orchestrator_fleet_gate_sample": ("What each gate's value was measured on at the rollout's last step "
                                       "(devices or requests, as the gate's metric counts)", ("rollout", "gate")),
    "orchestrator_fleet_gate_verdict": ("1 for each gate's verdict at the rollout's last step, 0 for the others "
                                        "(inconclusive never passes)", ("rollout", "gate", "verdict")),
    "orchestrator_fleet_left_on_version": (
        "Devices told to leave the rollout's version (revert, or skipped by a block) whose latest report still "
        "serves it: should reach 0", ("rollout",)),
    "orchestrator_fleet_blocks": ("Blocks in force (a version refused on the devices of a label)", ()),
}


class StepCounters(Protocol):
    """What the service counts (``ControllerService``): messages read, steps taken, the last step's seconds."""

    messages: int
    ticks: int
    tick_s: float


@dataclass(frozen=True)
class RolloutRow:
    id: str
    model: str
    phase: Phase
    updated_at: float


@dataclass(frozen=True)
class FleetReading:
    """What one refresh read of the store: every device, every rollout's row (oldest first), the rollouts shown
    in detail, and the blocks in force."""

    now: float
    devices: Sequence[DeviceRecord]
    rollouts: Sequence[RolloutRow]
    detailed: Sequence[Rollout]
    blocks: int = 0
    updated_at: Mapping[str, float] = field(default_factory=dict)


Samples = dict[str, list[tuple[tuple[str, ...], float]]]


def rollout_rows(store: FleetStore) -> list[RolloutRow]:
    """Every rollout's id, model, phase and last write, oldest first, without its assignments. (A read the
    store does not offer yet: it belongs in store.py beside ``rollout_ids``.)"""
    rows = store.db.execute("SELECT id, model, state, updated_at FROM rollouts ORDER BY created_at").fetchall()
    return [RolloutRow(r[0], r[1], Phase(json.loads(r[2])["phase"]), float(r[3])) for r in rows]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value that at least ``q`` of them are at or under."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def samples(reading: FleetReading) -> Samples:
    """Every sample of the collector's families for one reading. Pure."""
    found: Samples = {name: [] for name in FAMILIES}
    online = sum(d.online for d in reading.devices)
    found["orchestrator_fleet_devices"] = [(("online",), online), (("offline",), len(reading.devices) - online)]
    ages = sorted(max(0.0, reading.now - d.report_at) if d.report_at is not None else math.inf
                  for d in reading.devices)
    if ages:
        found["orchestrator_fleet_device_last_report_age_seconds"] = [
            ((f"{q:g}",), _quantile(ages, q)) for q in AGE_QUANTILES]
    for row in reading.rollouts:
        found["orchestrator_fleet_rollout_phase"] += [((row.id, row.model, p.value), float(p is row.phase))
                                                      for p in Phase]
    devices = {d.id: d for d in reading.devices}
    for rollout in reading.detailed:
        _rollout_samples(found, rollout, devices, reading.updated_at.get(rollout.id))
    found["orchestrator_fleet_blocks"] = [((), reading.blocks)]
    return found


def _serves(device: DeviceRecord | None, model: str, sha256: str) -> bool:
    """Whether the device's latest report serves this package (read only for devices told to leave it)."""
    return device is not None and codec.device_view(device.id, device.labels, device.online, device.report,
                                                    model).served_sha256 == sha256


def _rollout_samples(found: Samples, rollout: Rollout, devices: Mapping[str, DeviceRecord],
                     updated_at: float | None) -> None:
    r = rollout.id
    found["orchestrator_fleet_rollout_wave"].append(((r,), rollout.wave + 1))
    found["orchestrator_fleet_rollout_waves"].append(((r,), len(rollout.plan.waves)))
    if updated_at is not None:
        found["orchestrator_fleet_rollout_last_step_timestamp_seconds"].append(((r,), updated_at))
    counts = dict.fromkeys(DeviceState, 0)
    sha = rollout.plan.package.sha256
    left = 0
    for a in rollout.assignments.values():
        counts[a.state] += 1
        if a.state in LEAVING and _serves(devices.get(a.device), rollout.plan.model, sha):
            left += 1
    found["orchestrator_fleet_rollout_devices"] += [((r, s.value), n) for s, n in counts.items()]
    found["orchestrator_fleet_left_on_version"].append(((r,), left))
    for gate in rollout.plan.gates:
        bounds = {"min": gate.min, "max": gate.max_ratio if gate.compare else gate.max}
        found["orchestrator_fleet_gate_bound"] += [((r, gate.name, k), v) for k, v in bounds.items() if v is not None]
    for result in rollout.assessment.results:
        if result.value is not None:
            found["orchestrator_fleet_gate_value"].append(((r, result.name), result.value))
        found["orchestrator_fleet_gate_sample"].append(((r, result.name), result.sample))
        found["orchestrator_fleet_gate_verdict"] += [((r, result.name, v.value), float(v is result.verdict))
                                                     for v in Verdict]


class _Collector(Collector):
    """The families of the latest reading, built at each scrape from one snapshot."""

    def __init__(self) -> None:
        self.samples: Samples = {name: [] for name in FAMILIES}

    def describe(self) -> Iterator[Metric]:
        for name, (help_text, labels) in FAMILIES.items():
            yield GaugeMetricFamily(name, help_text, labels=labels)

    def collect(self) -> Iterator[Metric]:
        current = self.samples  # one reference: a refresh replaces it whole
        for name, (help_text, labels) in FAMILIES.items():
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for values, value in current[name]:
                family.add_metric(list(values), float(value))
            yield family


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, keep_finished: int = KEEP_FINISHED) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.keep_finished = keep_finished
        self.collector = _Collector()
        self.registry.register(self.collector)
        self.messages = Counter("orchestrator_fleet_messages", "Messages the controller read from the broker "
                                "(reports, events, presence)", registry=self.registry)
        self.steps = Counter("orchestrator_fleet_steps", "Steps the controller took (one of every active rollout "
                             "each gate interval)", registry=self.registry)
        self.step_seconds = Histogram("orchestrator_fleet_step_seconds", "How long a step took: every active "
                                      "rollout's step and this exporter's refresh", buckets=_STEP_BUCKETS,
                                      registry=self.registry)
        self._counted = (0, 0)  # the service's (messages, ticks) already in the counters
        self._loaded: dict[str, tuple[float, Rollout]] = {}  # rollout -> (updated_at it was read at, it)
        self._lock = threading.Lock()

    def refresh(self, controller: Controller, service: StepCounters | None = None) -> None:
        """Read the store once and replace every series; the service's counters when it passes itself."""
        started = time.perf_counter()
        with self._lock:
            try:
                reading = self.read(controller.store, controller.clock())
            except (FleetError, sqlite3.Error) as exc:  # the last series stay; the next step tries again
                log.warning("controller metrics not refreshed: %s", exc)
                return
            self.show(reading)
            if service is not None:
                self._count(service)
        self.step_seconds.observe((service.tick_s if service is not None else 0.0)
                                  + time.perf_counter() - started)

    def show(self, reading: FleetReading) -> None:
        self.collector.samples = samples(reading)

    def _count(self, service: StepCounters) -> None:
        messages, ticks = self._counted
        self.messages.inc(max(0, service.messages - messages))
        self.steps.inc(max(0, service.ticks - ticks))
        self._counted = (service.messages, service.ticks)

    def read(self, store: FleetStore, now: float) -> FleetReading:
        rows = rollout_rows(store)
        active = set(store.rollout_ids(active_only=True))
        finished = [r for r in rows if r.id not in active]
        shown = [r for r in rows if r.id in active] + finished[max(0, len(finished) - self.keep_finished):]
        loaded = {}
        for row in shown:
            cached = self._loaded.get(row.id)
            if cached is None or cached[0] != row.updated_at:
                # Outside a transaction: in WAL mode a read waits for no writer (an operator's command).
                cached = (row.updated_at, store.load_rollout(store.db, row.id, build_plan))
            loaded[row.id] = cached
        self._loaded = loaded
        return FleetReading(now, store.devices(), rows, [rollout for _, rollout in loaded.values()],
                            len(store.blocks()), {r.id: r.updated_at for r in shown})


def serve_controller_metrics(metrics: ControllerMetrics, address: str, port: int) -> WSGIServer:
    """``/metrics`` of the controller in a daemon thread until the process ends; returns the server."""
    try:
        server, _ = start_http_server(port, address, registry=metrics.registry)
    except OSError as exc:
        raise UsageError(f"cannot serve the controller's metrics on {address}:{port}: {exc.strerror or exc} "
                         f"(another process on that port? metrics.port in the controller's configuration)"
                         ) from exc
    return server
