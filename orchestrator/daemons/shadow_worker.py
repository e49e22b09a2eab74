"""The shadow worker: tail the production model's trace files, replay to the candidate, compare.

A model clients reach through an ensemble (``ShadowConfig.route``) is traced at the ensemble:
its client inputs are replayed to ``<route>__candidate`` (the same pre- and post-processing
with the candidate's step) and its final outputs compared; the version of the model that
answered production comes from the step's entry in the same trace file.

Three threads with one bounded queue between reading and replaying:

    tail     lists new trace files of the traced entry, parses them, deletes them; when the queue
             is full a sample is dropped (and counted) instead of waiting, so the worker never
             lets trace files or memory pile up and never slows production
    replay   sends one sample at a time to ``<traced>__candidate`` with a short timeout; a
             candidate that errs, hangs or crashes ``max_consecutive_errors`` times in a row
             ends the run as failed
    beat     publishes metrics and writes the state file about once a second while samples come
             (every HEARTBEAT_S when nothing changed)

Production never waits on any of this. The traced requests pay Triton's own part (their
tensors written out as text), and everything else costs production CPU on the same cores: so
the detached worker's threads run at the lowest priority (``yield_to_production``), the tail
sleeps until the kernel says a file was written (``folder_watch.py``) instead of polling, a
beat with nothing new does nothing, and only the traced entry's own tensors are parsed.
``scripts/bench shadow --isolate`` and ``--per-sample`` measure each part.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from orchestrator.core.shadow_stats import (
    DETECTION_TENSORS,
    DetectionAccumulator,
    LatencyWindow,
    ShadowPhase,
    ShadowReport,
    TensorAccumulator,
    is_detection,
)
from orchestrator.daemons.folder_watch import FolderWatch
from orchestrator.daemons.shadow_metrics import ShadowMetrics
from orchestrator.errors import OrchestratorError, TritonError
from orchestrator.store.repository import candidate_name
from orchestrator.store.shadow_state import ShadowConfig, read_state, write_state
from orchestrator.triton.client import Triton
from orchestrator.triton.traces import TRACING_OFF, Taken, TraceSample, TraceTail, shadow_tracing

log = logging.getLogger(__name__)

TAIL_INTERVAL_S = 0.02  # between looks at the trace folder where it cannot be watched (folder_watch.py)
TAIL_WATCHED_S = 0.25  # ...and where it is: the kernel wakes the tail when Triton writes a file
BEAT_INTERVAL_S = 1.0
HEARTBEAT_S = 5.0  # the state is written at least this often (store/shadow_state.py: stale after 15 s)
WORKER_NICE = 19


def yield_to_production(nice: int = WORKER_NICE) -> None:
    """Run the calling thread at a low CPU priority (nice 19: the lowest), so that where the cores are busy
    the shadow falls behind (its queue drops samples, counted) instead of taking time from production.

    Linux keeps the nice value per thread (setpriority on the thread id): only the worker's threads."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), nice))
    except (AttributeError, OSError) as exc:  # not Linux: the worker keeps the priority it has
        log.debug("could not lower the shadow worker's priority: %s", exc)


class ShadowWorker:
    def __init__(self, config: ShadowConfig, state_folder: Path | None = None,
                 registry: CollectorRegistry | None = None, admin_key: str | None = None,
                 triton_factory: Callable[..., Triton] = Triton, nice: int | None = None) -> None:
        self.config = config
        self.nice = nice  # the threads' nice value; None: as the process's (a worker inside tests)
        self.state_folder = state_folder
        self.metrics = ShadowMetrics(registry or CollectorRegistry())
        self._triton = triton_factory
        self._admin_key = admin_key
        self.queue: queue.Queue[TraceSample] = queue.Queue(maxsize=config.queue_size)
        self.stopped = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._tensors: dict[str, TensorAccumulator] = {}
        self._detections: DetectionAccumulator | None = None
        self._served_versions: dict[int, int] = {}
        self.traced = config.traced  # what clients call: the model, or the ensemble it serves through
        self.target = candidate_name(self.traced)  # where samples are replayed
        self._served = LatencyWindow()
        self._candidate = LatencyWindow()
        self._counts = {"sampled": 0, "compared": 0, "dropped": 0, "candidate_errors": 0, "queue_high_water": 0}
        self._phase, self._reason = ShadowPhase.RUNNING, ""
        self._stats_base: tuple[int, int] | None = None
        self._candidate_server_ms: float | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> ShadowWorker:
        control = self._client(10.0)
        try:
            self._stats_base = control.inference_stats(self.target)
            control.update_trace_settings(self.traced, shadow_tracing(self.config.sample_rate))
        finally:
            control.close()
        for target in (self._tail_loop, self._replay_loop, self._beat_loop):
            thread = threading.Thread(target=self._thread, args=(target,), name=f"shadow-{target.__name__}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _thread(self, loop: Callable[[], None]) -> None:
        if self.nice is not None:
            yield_to_production(self.nice)
        loop()

    def stop(self, timeout_s: float = 10.0) -> ShadowReport:
        """Stop replaying, turn tracing off, write the final state (the candidate stays: ``shadow stop`` drops it)."""
        if not self.stopped.is_set():
            self._set_phase(ShadowPhase.STOPPED, "")
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._tracing_off()
        report = self.report()
        self.metrics.publish(report)  # the last replay may have ended after the beat's last look
        self._persist(report)
        self.finished.set()
        return report

    def fail(self, reason: str) -> None:
        """The candidate broke: stop sampling at once so production stops paying for traces."""
        log.warning("%s shadow of v%d failed: %s", self.config.model, self.config.version, reason)
        self._set_phase(ShadowPhase.FAILED, reason)
        self.stopped.set()
        self._tracing_off()

    def _set_phase(self, phase: ShadowPhase, reason: str) -> None:
        with self._lock:
            if self._phase == ShadowPhase.RUNNING:
                self._phase, self._reason = phase, reason

    def _tracing_off(self) -> None:
        client = self._client(10.0)
        try:
            client.update_trace_settings(self.traced, TRACING_OFF)
        except OrchestratorError as exc:
            log.warning("could not turn tracing off for %s: %s", self.traced, exc)
        finally:
            client.close()

    def _client(self, timeout_s: float) -> Triton:
        return self._triton(self.config.triton_url, self._admin_key, timeout_s)

    # --- reading traces -----------------------------------------------------------------
    def _tail_loop(self) -> None:
        tail = TraceTail(Path(self.config.trace_dir), self.config.trace_prefix, self.traced,
                         nested=bool(self.config.route))
        # Woken per file, not polling: each trace is replayed when it comes, as production's traffic came
        # (polling backing off to 250 ms made bursts, and the identical classifier's candidate then read
        # 1.5-1.65x production's latency in Triton), and nothing runs while none comes.
        watch = FolderWatch(Path(self.config.trace_dir))
        try:
            while not self.stopped.is_set():
                for path in tail.files():
                    if self.stopped.is_set():
                        break
                    self._take(tail, path)
                watch.wait(TAIL_WATCHED_S if watch.watching else TAIL_INTERVAL_S)
        finally:
            watch.close()

    def _take(self, tail: TraceTail, path: Path) -> None:
        taken, samples = tail.take(path, skip=self.queue.full)
        if taken is Taken.DROPPED:
            self._count(sampled=1, dropped=1)
            return
        for sample in samples:
            self._count(sampled=1)
            if self._answered_by(sample) == self.config.version:
                self._count(dropped=1)  # the candidate's version served production meanwhile
                continue
            try:
                self.queue.put_nowait(sample)
            except queue.Full:
                self._count(dropped=1)
        with self._lock:
            self._counts["queue_high_water"] = max(self._counts["queue_high_water"], self.queue.qsize())

    def _answered_by(self, sample: TraceSample) -> int | None:
        """The version of the managed model that answered production (in a route: its step's entry)."""
        return sample.steps.get(self.config.model) if self.config.route else sample.version

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                self._counts[key] += value
        if deltas.get("dropped"):
            self.metrics.dropped.labels(self.config.model).inc(deltas["dropped"])

    # --- replaying ----------------------------------------------------------------------
    def _replay_loop(self) -> None:
        client = self._client(self.config.replay_timeout_s)
        entry = self.target
        consecutive = 0
        try:
            while not self.stopped.is_set():
                try:
                    sample = self.queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                started = time.perf_counter()
                try:
                    result = client.infer(entry, sample.inputs, list(sample.outputs))
                except TritonError as exc:
                    consecutive += 1
                    self._count(candidate_errors=1)
                    self.metrics.errors.labels(self.config.model).inc()
                    client.close()  # a timed-out connection may still carry the late answer
                    client = self._client(self.config.replay_timeout_s)
                    if consecutive >= self.config.max_consecutive_errors:
                        self.fail(f"the candidate failed {consecutive} replays in a row; last: {exc}")
                    continue
                consecutive = 0
                self._compare(sample, result.outputs, (time.perf_counter() - started) * 1000.0)
        finally:
            client.close()

    def _compare(self, sample: TraceSample, outputs: dict[str, object], replay_ms: float) -> None:
        detection = is_detection(sample.outputs)
        with self._lock:
            if detection:
                self._detections = self._detections or DetectionAccumulator()
                self._detections.add(outputs, sample.outputs)  # type: ignore[arg-type]
            for name, served in sample.outputs.items():
                candidate = outputs.get(name)
                if candidate is not None and not (detection and name in DETECTION_TENSORS):
                    self._tensors.setdefault(name, TensorAccumulator()).add(candidate, served)  # type: ignore[arg-type]
            version = self._answered_by(sample)
            if version is not None:
                self._served_versions[version] = self._served_versions.get(version, 0) + 1
            if sample.served_ms is not None:
                self._served.add(sample.served_ms)
            self._candidate.add(replay_ms)
            self._counts["compared"] += 1
        self.metrics.samples.labels(self.config.model).inc()

    # --- reporting ----------------------------------------------------------------------
    def _beat_loop(self) -> None:
        client = self._client(5.0)
        last: ShadowReport | None = None
        written = time.monotonic()
        try:
            while True:
                # Nothing new: no statistics to ask Triton for, no state to rewrite (measured: a beat costs
                # about 1 ms of CPU, as much as a sample). The first at once: `shadow start` waits for it.
                if last is None or self.report() != last or time.monotonic() - written >= HEARTBEAT_S:
                    self._poll_candidate_stats(client)
                    last = self.report()
                    self.metrics.publish(last)
                    self._persist(last)
                    written = time.monotonic()
                if self.stopped.wait(BEAT_INTERVAL_S):
                    break
            self._poll_candidate_stats(client)
            report = self.report()
            self.metrics.publish(report)
            self._persist(report)  # a failure ends the loop: its state must still reach the disk
        finally:
            client.close()

    def _poll_candidate_stats(self, client: Triton) -> None:
        if self._stats_base is None:
            return
        try:
            count, total_ns = client.inference_stats(self.target)
        except OrchestratorError:
            return  # a crashed candidate keeps its last figure
        base_count, base_ns = self._stats_base
        if count > base_count:
            self._candidate_server_ms = (total_ns - base_ns) / (count - base_count) / 1e6

    def report(self) -> ShadowReport:
        with self._lock:
            return ShadowReport(
                model=self.config.model, version=self.config.version, phase=self._phase, reason=self._reason,
                tensors={name: acc.summary() for name, acc in self._tensors.items()},
                served_latency=self._served.summary(), candidate_latency=self._candidate.summary(),
                candidate_server_mean_ms=self._candidate_server_ms,
                detection=self._detections.summary() if self._detections is not None else None,
                served_versions=dict(sorted(self._served_versions.items())), **self._counts)

    def _persist(self, report: ShadowReport) -> None:
        self.metrics.queue.labels(self.config.model).set(self.queue.qsize())
        if self.state_folder is None:
            return
        state = read_state(self.state_folder)
        if state is None or state.phase == ShadowPhase.STOPPED:
            return  # ``shadow stop`` closed the run: never reopen it
        phase = report.phase if report.phase != ShadowPhase.STOPPED else state.phase
        write_state(self.state_folder, replace(state, phase=phase, reason=report.reason, heartbeat=time.monotonic(),
                                               report=report.to_dict()))


def run_detached(state_folder: Path, admin_key: str | None) -> int:
    """The body of ``python -m orchestrator.daemons.shadow_main STATE_FOLDER``: run until SIGTERM or failure."""
    import signal  # noqa: PLC0415 - only the detached process installs handlers

    state = read_state(state_folder)
    if state is None:
        return 2
    registry = CollectorRegistry()
    if state.config.metrics_port:
        from prometheus_client import start_http_server  # noqa: PLC0415

        start_http_server(state.config.metrics_port, registry=registry)
    worker = ShadowWorker(state.config, state_folder, registry, admin_key, nice=WORKER_NICE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        worker.start()
    except OrchestratorError as exc:
        write_state(state_folder, replace(state, phase=ShadowPhase.FAILED, reason=f"worker could not start: {exc}",
                                          heartbeat=time.monotonic()))
        return 1
    while not stop.wait(0.2) and not worker.stopped.is_set():
        pass
    failed = worker.report().phase == ShadowPhase.FAILED
    worker.stop()
    return 1 if failed else 0


def in_process(registry: CollectorRegistry | None = None) -> Callable[[ShadowConfig, Path, str | None], ShadowWorker]:
    """``start_shadow(run_worker=...)`` for a worker in this process (tests, benchmarks)."""
    def run(config: ShadowConfig, state_folder: Path, admin_key: str | None) -> ShadowWorker:
        return ShadowWorker(config, state_folder, registry, admin_key).start()

    return run
