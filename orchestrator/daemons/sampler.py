"""Real production outputs of one model, sampled by Triton's own tensor tracing.

Golden probes answer "does the version still do what it did on known inputs"; drift needs
what clients actually got. Triton can write the tensors of one request in N to files
(``--trace-config triton,file=...``); the sampler switches that on for its model, reads
and deletes its model's files, and keeps the cost bounded three ways:

- the rate follows the traffic: 1 request in ``round(requests_per_s / samples_per_s)`` is
  traced, never more than 1 in ``MIN_TRACE_RATE`` (shadow's cap: Triton 2.51 segfaulted
  tracing every request under load);
- ``trace_count`` is a lease: each arm allows ``LEASE_S`` worth of samples and Triton stops
  tracing by itself when they are spent (measured: the count runs down to 0 and tracing
  stops; setting it again re-arms). The sampler re-arms every ``REARM_S``, so a watcher
  that dies stops costing production within a minute;
- while a shadow run is active it owns the model's tracing and its trace files: the sampler
  stands aside (drift is inconclusive meanwhile) and, should its own arm have landed after
  the shadow worker's, puts the shadow's settings back (on what the shadow traces: the route).

A model clients reach through an ensemble (``ModelSnapshot.route``) is sampled there, as shadow
traces it: the ensemble is ``traced``, its files are read nested (its steps' entries first) and
each sample's ``steps`` names the version of every step that answered.

With replay on (``store/replay.py``'s ``tracing_ring``) the inputs of the sampled requests are
parsed too and offered to the model's replay ring (which keeps 1 in its ``every_n``): replay
rides on drift's tracing budget and never raises it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.core.shadow_stats import ShadowPhase
from orchestrator.errors import OrchestratorError
from orchestrator.store.replay_ring import RingWriter
from orchestrator.store.repository import ModelStore
from orchestrator.store.shadow_state import active_shadow
from orchestrator.triton.client import Triton
from orchestrator.triton.traces import (
    TRACING_OFF,
    TraceSample,
    TraceTail,
    shadow_tracing,
    trace_location,
    tracing_settings,
)

log = logging.getLogger(__name__)

LEASE_S = 60.0
REARM_S = 20.0
INITIAL_TRACE_RATE = 1000  # 1 request in N until the request rate is known
MIN_TRACE_RATE = 4
LOCATE_RETRY_S = 20.0


def trace_rate(requests_per_s: float, samples_per_s: float) -> int:
    """Trace 1 request in N so that about ``samples_per_s`` are sampled."""
    return max(MIN_TRACE_RATE, round(requests_per_s / samples_per_s))


def lease_count(samples_per_s: float) -> int:
    return max(10, math.ceil(samples_per_s * LEASE_S))


def needs_rearm(armed: int | None, wanted: int) -> bool:
    """Re-arm for a new rate only when it is off by 2x: traffic jitter must not churn settings."""
    return armed is None or wanted > 2 * armed or 2 * wanted < armed


class ProductionSampler:
    def __init__(self, triton: Triton, store: ModelStore, samples_per_s: float, trace_dir: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, ring: RingWriter | None = None,
                 traced: str | None = None) -> None:
        self.triton, self.store, self.samples_per_s = triton, store, samples_per_s
        self.traced = traced or store.name  # what clients call: the model, or the ensemble it serves through
        self.ring = ring  # replay's recorder of the sampled requests' inputs; None: outputs only
        self.ring_errors = 0
        self.trace_dir = trace_dir
        self.clock = clock
        self.tail: TraceTail | None = None
        self.reason = ""  # why nothing is being sampled; "" while sampling
        self.armed_rate: int | None = None
        self.armed_at = -math.inf
        self.located_at = -math.inf
        self.standing_aside = False

    def poll(self, requests_per_s: float | None) -> list[TraceSample]:
        """The traced entry's requests since the last poll (outputs; inputs too with a ring); keeps tracing armed."""
        said = self.reason
        samples = self._poll(requests_per_s)
        if self.ring is not None:
            self._record(samples, self.ring)
        if self.reason and self.reason != said:
            log.warning("%s: drift sampling paused: %s", self.store.name, self.reason)
        return samples

    def _poll(self, requests_per_s: float | None) -> list[TraceSample]:
        if self._shadowed():
            return []
        if self.tail is None and not self._locate():
            return []
        assert self.tail is not None
        try:
            self._arm(requests_per_s)
        except OrchestratorError as exc:
            self.reason = f"cannot switch tracing on: {exc}"
            return []
        samples: list[TraceSample] = []
        for path in self.tail.files():
            samples.extend(self.tail.take(path)[1])
        self.reason = ""
        return samples

    def _record(self, samples: list[TraceSample], ring: RingWriter) -> None:
        for sample in samples:
            if sample.inputs:
                ring.offer(sample.inputs)  # never raises: a full disk is counted
        if ring.errors != self.ring_errors:
            self.ring_errors = ring.errors
            log.warning("%s: replay ring not written (%d errors so far): %s", self.store.name, ring.errors,
                        ring.last_error)

    def close(self) -> None:
        """Tracing back to the server's settings (off) and this model's leftover files removed."""
        if self.ring is not None:
            self.ring.close()
        if self.tail is None or self.armed_rate is None or self.standing_aside:
            return
        try:
            self.triton.update_trace_settings(self.traced, TRACING_OFF)
        except OrchestratorError as exc:
            log.warning("%s: could not switch tracing off: %s (the lease ends it within %.0f s)",
                        self.traced, exc, LEASE_S)
            return
        self.armed_rate = None
        self.tail.remove_all()

    def _shadowed(self) -> bool:
        shadow = active_shadow(self.store)
        if shadow is None:
            self.standing_aside = False
            return False
        if shadow.phase == ShadowPhase.RUNNING and not self.standing_aside:
            try:  # our lease may have landed after the worker's settings a moment ago: the entry it traces
                self.triton.update_trace_settings(shadow.config.traced, shadow_tracing(shadow.config.sample_rate))
            except OrchestratorError as exc:
                log.warning("%s: could not hand tracing back to the shadow run: %s", self.store.name, exc)
                return True  # try again next poll
            self.standing_aside = True
        elif shadow.phase == ShadowPhase.FAILED:
            self.standing_aside = True  # the worker switched tracing off when it failed: leave it off
        # "starting": the worker is about to set its own settings; wait for it to run or fail.
        self.armed_rate, self.armed_at = None, -math.inf
        self.reason = f"production outputs belong to the shadow run of v{shadow.config.version} until it stops"
        return True

    def _locate(self) -> bool:
        now = self.clock()
        if now - self.located_at < LOCATE_RETRY_S:
            return False
        self.located_at = now
        try:
            folder, prefix = trace_location(self.triton, self.traced, self.trace_dir, "drift sampling")
        except OrchestratorError as exc:
            self.reason = str(exc)
            return False
        self.tail = TraceTail(folder, prefix, self.traced, inputs=self.ring is not None,
                              nested=self.traced != self.store.name)
        return True

    def _arm(self, requests_per_s: float | None) -> None:
        wanted = self.armed_rate or INITIAL_TRACE_RATE
        if requests_per_s:
            wanted = trace_rate(requests_per_s, self.samples_per_s)
        now = self.clock()
        if not needs_rearm(self.armed_rate, wanted) and now - self.armed_at < REARM_S:
            return
        self.triton.update_trace_settings(self.traced, tracing_settings(wanted, lease_count(self.samples_per_s)))
        self.armed_rate, self.armed_at = wanted, now

