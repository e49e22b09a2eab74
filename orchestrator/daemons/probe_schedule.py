"""When one model's watcher probes: the probe budget (``core/probe_budget.py``) and the cost it is debited.

A probe costs the device time of one execution of each model it passes through: the watched
model, or for a model served inside an ensemble the ensemble's steps (pre-processing, network,
NMS: their costs add up). The cost is read from Triton's own statistics
(``TritonAPI.execution_stats``): compute time per execution over the executions since the last
read, as an EWMA, read no more often than the metrics scrape. Until a read has seen an execution
the probe's own round trip stands in (``ProbeCost``: an upper bound, it includes the network).
Client traffic runs the same models, so the figure is what an execution costs on this device now.
Each probe is debited the estimate in force when it ran; ``orchestrator_probe_spent_ratio`` sums
those debits over the last minute.

The schedule also says when the watcher next needs a tick (``next_due``): the next probe, or
within ``interval_s`` during a bake and ``STEADY_TICK_S`` after it, so that a change on disk is
seen soon whatever the budget. Those times fall on a grid of ``interval_s`` common to every
watcher (a probe's ``interval_s`` counts from its slot on the grid), so that a daemon watching ten
models wakes once per slot for all of them rather than once per model: a watcher ticked alone
after a sleep cost about three times its CPU in a pass of several (measured: one bare inference,
0.2 ms back to back, 0.6 ms 20 ms apart).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from orchestrator.core.policy import WatchPolicy
from orchestrator.core.probe_budget import (
    BAKE,
    PHASES,
    STEADY,
    Bucket,
    Budget,
    due,
    grid_after,
    on_grid,
    ready_at,
    since,
    spend,
    start,
)
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.errors import TritonError
from orchestrator.triton.protocol import ExecutionStats, TritonAPI

ALPHA = 0.3  # weight of the newest reading in the cost's EWMA
SPENT_WINDOW_S = 60.0  # orchestrator_probe_spent_ratio: what the probes used over the last minute
STEADY_TICK_S = 1.0  # after the bake a watcher still looks at the disk at least this often


def _ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else (1 - ALPHA) * previous + ALPHA * sample


def next_scrape(now: float, every_s: float) -> float:
    """The next scrape of Triton's /metrics after one at ``now``: on a grid of ``every_s`` common to every watcher,
    so that those of one daemon look in the same pass and share one scrape (``shared_scrape.py``)."""
    return (math.floor(now / every_s) + 1) * every_s


class ProbeCost:
    """Device seconds one probe costs, from the statistics of the models it passes through; until they tell,
    the shortest round trip seen (every one includes the compute), the first one left out: it also opens the
    connection and imports the inference client (measured: 45-65 ms, then 1-3 ms)."""

    def __init__(self, models: tuple[str, ...], every_s: float, samples: int = 1) -> None:
        self.models, self.every_s, self.samples = models, every_s, samples
        self.read_at = -math.inf
        self.last: dict[str, dict[int, ExecutionStats]] = {}
        self.per_model: dict[str, float] = {}  # seconds per probe, once a read saw executions
        self.round_trip: float | None = None
        self.answered = 0  # probes that succeeded
        self.own: float | None = None  # the watcher's CPU seconds per probe (EWMA): sending it and judging it

    @property
    def seconds(self) -> float:
        """Triton's compute for a probe plus the watcher's own CPU for it: on a device both come out of what the
        clients are served with. A sub-millisecond model's probe costs the watcher about as much CPU as Triton
        (measured: ~1 ms, 0.6 ms of it in tritonclient), so leaving it out let ten such models take 12 % of a
        core at a 1 % budget."""
        if self.per_model:
            return sum(self.per_model.values()) + (self.own or 0.0)
        return self.round_trip or 0.0

    @property
    def measured(self) -> bool:
        return bool(self.per_model)

    def measure(self, triton: TritonAPI, now: float) -> None:
        """Read the statistics when ``every_s`` passed since the last read; a model Triton cannot answer for
        keeps its last estimate."""
        if now - self.read_at < self.every_s:
            return
        self.read_at = now
        for model in self.models:
            try:
                stats = triton.execution_stats(model)
            except TritonError:
                continue
            before, self.last[model] = self.last.get(model), stats
            if before is None:
                continue
            # Per version, so that an unloaded (or reloaded: counters from zero) version adds nothing.
            # Per sample, times the probe's samples: clients' executions are often of one frame, a probe's of
            # several, and a per-execution figure would charge a 4-frame probe as one frame (measured: the bake
            # budget then took half the detector's throughput instead of its 20 %).
            deltas = [(s.executions - before[v].executions, s.inferences - before[v].inferences,
                       s.compute_ns - before[v].compute_ns) for v, s in stats.items() if v in before]
            kept = [(e, i, ns) for e, i, ns in deltas if e > 0 and ns >= 0]
            executions, samples = sum(e for e, _, _ in kept), sum(i for _, i, _ in kept)
            if executions:
                compute_s = sum(ns for _, _, ns in kept) / 1e9
                per_probe = compute_s / samples * self.samples if samples > 0 else compute_s / executions
                self.per_model[model] = _ewma(self.per_model.get(model), per_probe)

    def probed(self, round_trip_s: float, ok: bool, cpu_s: float | None = None) -> None:
        """A failed probe's time (a timeout, a refused request) says nothing of what a probe costs. ``cpu_s``: the
        watcher's CPU time for the probe (its thread's)."""
        if not ok:
            return
        self.answered += 1
        if self.answered > 1:  # the first one also opens the connection and imports the client
            self.round_trip = round_trip_s if self.round_trip is None else min(self.round_trip, round_trip_s)
            if cpu_s is not None and cpu_s >= 0:
                self.own = _ewma(self.own, cpu_s)


class ProbeSchedule:
    """One model's bucket, the cost it is debited, and the metrics that show both.

    ``models``: what a probe passes through (default: the watched model alone). ``wall``: the clock the
    journal's times are on, to start the first bake where the last switch left it. ``sharers``: the models
    the daemon watches, which share the device's steady budget.
    """

    def __init__(self, model: str, policy: WatchPolicy, metrics: WatchMetrics, models: tuple[str, ...] | None = None,
                 wall: Callable[[], float] = time.time, sharers: int = 1) -> None:
        self.budget = Budget.of(policy, sharers)
        self.cost = ProbeCost(models or (model,), policy.metrics_interval_s, policy.probe_batch)
        self.wall = wall
        self.bucket: Bucket | None = None  # none until the first switch is seen (the watcher's first tick)
        self.started_at: float | None = None
        self.spent: deque[tuple[float, float]] = deque()  # (clock time, cost) of the last minute's probes
        self.spent_s = 0.0
        self.phase_shown = ""
        self._budget_ratio = {phase: metrics.probe_budget.labels(model, phase) for phase in PHASES}
        self._cost, self._spent = metrics.probe_cost.labels(model), metrics.probe_spent.labels(model)
        self._probes = metrics.probes.labels(model)

    def reset(self, now: float, last_switch: str | None) -> None:
        """A switch. The first one a watcher sees is its start: the bake then runs from the journal's last
        switch (``last_switch``, ISO; none on record: steady state), as ``orchestrate status`` shows it."""
        if self.bucket is None:
            elapsed = since(last_switch, self.wall())
            switched_at = -math.inf if elapsed is None else now - elapsed
            self.started_at = now
        else:
            switched_at = now
        self.bucket = start(switched_at, now)
        self._publish(now)

    def phase(self, now: float) -> str:
        """Bake or steady; steady before the first switch is seen (nothing serves yet: nothing to bake)."""
        return self.budget.phase(now - self.bucket.switched_at) if self.bucket is not None else STEADY

    def measure(self, triton: TritonAPI, now: float) -> None:
        self.cost.measure(triton, now)

    def due(self, now: float) -> bool:
        """Whether the budget allows a probe now."""
        self._publish(now)
        return self.bucket is not None and due(self.budget, self.bucket, self.cost.seconds, now)

    def probed(self, now: float, round_trip_s: float, ok: bool, cpu_s: float | None = None) -> None:
        """A probe ran at ``now``: the bucket is debited what a probe costs (its own time until Triton's statistics
        tell); ``cpu_s``: the watcher's CPU time for it."""
        self.cost.probed(round_trip_s, ok, cpu_s)
        cost = self.cost.seconds
        if self.bucket is not None:
            self.bucket = spend(self.budget, self.bucket, cost, now, on_grid(now, self.budget.interval_s))
        self.spent.append((now, cost))
        self.spent_s += cost
        self._probes.inc()
        self._publish(now)

    def next_due(self, now: float, probing: bool, *others: float) -> float:
        """The clock time of the next tick: the next probe (when ``probing``), ``others`` (the scrape, the drift
        sampler), and at most ``interval_s`` away during a bake, ``STEADY_TICK_S`` after it: on the grid."""
        step = self.budget.interval_s
        wanted = [on_grid(now, step) + (step if self.phase(now) == BAKE else STEADY_TICK_S), *others]
        if probing and self.bucket is not None:
            wanted.append(grid_after(ready_at(self.budget, self.bucket, self.cost.seconds, now), step))
        return min(wanted)

    def spent_share(self, now: float) -> float:
        """The share of the device's time the probes used over the last minute (or since the watcher started)."""
        while self.spent and self.spent[0][0] < now - SPENT_WINDOW_S:
            self.spent_s -= self.spent.popleft()[1]
        if self.started_at is None:
            return 0.0
        return max(0.0, self.spent_s) / max(1.0, min(SPENT_WINDOW_S, now - self.started_at))

    def _publish(self, now: float) -> None:
        if self.bucket is not None:
            phase = self.phase(now)
            if phase != self.phase_shown:
                for name, gauge in self._budget_ratio.items():
                    gauge.set(self.budget.share(now - self.bucket.switched_at) if name == phase else 0.0)
                self.phase_shown = phase
        self._cost.set(self.cost.seconds)
        self._spent.set(self.spent_share(now))
