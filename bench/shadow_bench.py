"""Production latency with a shadow run off vs on, under the same client load, in alternating windows.

Starts the embedded Triton with tracing available, files the served network again as v2 and
starts a detached shadow worker at the default sample rate, as ``orchestrate shadow start``
does. Client threads infer throughout; between windows the bench switches the shadow off (the
production model's tracing off, the worker stopped with SIGSTOP: no shadow cost at all) and on
(tracing on, the worker resumed). Each state's figures are the medians over its windows, and its
ratios the median of each window's ratio to the off window just before it, so that other work on
the machine, which drifts slowly, cancels out. Measured on 2 cores shared with other sessions: one
window's p99 ratio spreads over about 0.85..1.18 (the interquartile range), so 40 windows a state
(6 minutes) resolve the median to about +-3%.

``--isolate`` adds one state per part of the cost, each alternating with ``off``:

    idle    the worker runs, tracing is off: its polling and heartbeats alone
    trace   tracing on at the sample rate, no worker (the files wait until the window ends):
            Triton's own cost (tensors serialised to text, a file written per traced request)
    parse   tracing on, a worker that reads, parses and deletes the files but replays nothing
    on      the real worker: parse, replay to the candidate, compare

Latency under load is noisy where other work shares the cores; ``--per-sample`` measures what
each part costs in CPU time instead, one request at a time (no client load): Triton's per traced
request (tracing on every 4th request against off), the worker's per sample (read and parse a
trace file, the replay's client side, the comparison), Triton's per replay, and the idle
worker's look at the trace folder.

    scripts/bench shadow [--windows 8] [--window-s 4] [--threads 4] [--sample-rate 0.001] [--isolate]
    scripts/bench shadow --per-sample [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import MODEL, TICKS, Clients, sample_stack
from orchestrator.core.shadow_stats import TensorAccumulator
from orchestrator.daemons.shadow_worker import WORKER_NICE, ShadowWorker
from orchestrator.sample import Variant, golden_set, write_sample_package
from orchestrator.settings import Settings
from orchestrator.store.repository import candidate_name
from orchestrator.store.shadow_state import ShadowConfig, read_state, write_state
from orchestrator.triton.client import Triton
from orchestrator.triton.traces import TRACING_OFF, TraceTail, shadow_tracing, trace_files, tracing_settings
from orchestrator.usecases.orchestrator import Orchestrator
from orchestrator.usecases.shadow import DEFAULT_SAMPLE_RATE, start_shadow, stop_shadow

SETTLE_S = 0.3  # requests in flight across a switch are not counted
STATES = ("off", "on")
ISOLATED = ("off", "idle", "trace", "parse", "on")


@dataclass(frozen=True)
class Window:
    state: str
    p50: float
    p99: float
    rps: float
    worker_cpu: float  # the shadow's reader (worker, or the parse-only one), % of one core
    triton_cpu: float  # tritonserver and its python stubs, % of one core


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of ``pid`` and its children (tritonserver's python stubs)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


class ParseOnly(ShadowWorker):
    """The worker's reading and parsing, without replays (``--isolate``'s ``parse`` state)."""

    def _replay_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._count(compared=1)


def parse_only_main(config_path: str) -> None:
    """``python -m bench.shadow_bench --parse-only CONFIG``: a ParseOnly worker until SIGTERM."""
    config = ShadowConfig(**json.loads(Path(config_path).read_text()))
    worker = ParseOnly(config, None, None, os.environ.get("ORCH_ADMIN_KEY"), nice=WORKER_NICE)  # as detached
    worker.start()
    signal.signal(signal.SIGTERM, lambda *_: worker.stopped.set())
    while not worker.stopped.wait(0.2):
        pass
    worker.stop()


class Switch:
    """Puts the machine in one state between windows (outside the measured time)."""

    def __init__(self, control: Triton, config: ShadowConfig, worker_pid: int, parser_pid: int | None) -> None:
        self.control, self.config = control, config
        self.worker, self.parser = worker_pid, parser_pid
        self.tracing_on = shadow_tracing(config.sample_rate)

    def enter(self, state: str) -> None:
        tracing = state in ("trace", "parse", "on")
        self.control.update_trace_settings(self.config.model, self.tracing_on if tracing else TRACING_OFF)
        _signal(self.worker, state in ("idle", "on"))
        if self.parser is not None:
            _signal(self.parser, state == "parse")

    def leave(self, state: str) -> None:
        self.control.update_trace_settings(self.config.model, TRACING_OFF)
        time.sleep(0.2)  # the running reader takes the last files
        if state == "trace":  # nobody read them: remove them before a reader resumes
            for path in trace_files(Path(self.config.trace_dir), self.config.trace_prefix):
                path.unlink(missing_ok=True)

    def resume_all(self) -> None:
        _signal(self.worker, True)
        if self.parser is not None:
            _signal(self.parser, True)


def _signal(pid: int, run: bool) -> None:
    os.kill(pid, signal.SIGCONT if run else signal.SIGSTOP)


def schedule(states: tuple[str, ...], rounds: int) -> list[str]:
    """``off`` before every other state, so each has an off-window beside it; the others in an order rotated
    each round, so that none always follows the same one."""
    others, order = list(states[1:]), []
    for index in range(rounds):
        turn = index % len(others)
        for state in others[turn:] + others[:turn]:
            order += ["off", state]
    return order


def measure(load: Clients, switch: Switch, order: list[str], window_s: float, triton: int) -> list[Window]:
    windows = []
    readers = [pid for pid in (switch.worker, switch.parser) if pid is not None]
    for index, state in enumerate(order):
        switch.enter(state)
        time.sleep(SETTLE_S)
        tag = f"{state}#{index}"
        cpu_w, cpu_t, started = sum(map(tree_cpu, readers)), tree_cpu(triton), time.perf_counter()
        load.window = tag
        time.sleep(window_s)
        load.window = "switching"
        elapsed = time.perf_counter() - started
        worker_cpu = (sum(map(tree_cpu, readers)) - cpu_w) / elapsed * 100.0
        triton_cpu = (tree_cpu(triton) - cpu_t) / elapsed * 100.0
        switch.leave(state)
        values = np.array([a.ms for a in load.in_window(tag)])
        windows.append(Window(state, float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                              len(values) / elapsed, worker_cpu, triton_cpu))
    return windows


def paired(windows: list[Window], state: str, field: str) -> float:
    """Median over ``state``'s windows of its figure / the off window just before it: the machine's other
    load (other processes on the cores) drifts slowly, so neighbours see about the same."""
    ratios = [getattr(w, field) / getattr(windows[i - 1], field) for i, w in enumerate(windows)
              if w.state == state and i > 0 and windows[i - 1].state == "off"]
    return statistics.median(ratios) if ratios else 1.0


def report(windows: list[Window], states: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Prints the table; returns each state's (p99 ratio, throughput ratio) against ``off``: the median of
    the ratios to the neighbouring off window."""
    med = {s: {f: statistics.median(getattr(w, f) for w in windows if w.state == s)
               for f in ("p50", "p99", "rps", "worker_cpu", "triton_cpu")} for s in states}
    print(f"{'state':<8}{'windows':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'p99 x':>8}{'req/s x':>9}"
          f"{'worker %':>10}{'triton %':>10}")
    ratios = {}
    for state in states:
        m = med[state]
        ratios[state] = (paired(windows, state, "p99"), paired(windows, state, "rps"))
        print(f"{state:<8}{sum(w.state == state for w in windows):>8}{m['p50']:>9.3f}{m['p99']:>9.3f}"
              f"{m['rps']:>8.0f}{ratios[state][0]:>8.3f}{ratios[state][1]:>9.3f}{m['worker_cpu']:>10.1f}"
              f"{m['triton_cpu']:>10.1f}")
    print("(figures: medians over windows; x: median of each window's ratio to the off window before it; "
          "%: of one core)")
    return ratios


def spawn_parser(config: ShadowConfig, tmp: Path) -> subprocess.Popen[bytes]:
    path = tmp / "parse-only.json"
    path.write_text(json.dumps(asdict(config)))
    process = subprocess.Popen([sys.executable, "-m", "bench.shadow_bench", "--parse-only", str(path)],
                               stdout=subprocess.DEVNULL, stderr=(tmp / "parse-only.log").open("ab"))
    time.sleep(3.0)  # imports and start-up, before any window
    return process


def cpu_per_call(calls: int, run: Callable[[], object], triton: int) -> tuple[float, float]:
    """(this thread's CPU µs, tritonserver's and its stubs' CPU µs) per call of ``run``."""
    thread, server = time.thread_time(), tree_cpu(triton)
    for _ in range(calls):
        run()
    return (time.thread_time() - thread) / max(calls, 1) * 1e6, (tree_cpu(triton) - server) / max(calls, 1) * 1e6


def cost_round(client: Triton, config: ShadowConfig, state: Path, requests: int,
               triton: int) -> list[tuple[str, float]]:
    """One measurement of every part: (what, CPU µs per call)."""
    images, turn = golden_set()[0], iter(range(10**9))

    def infer() -> None:
        client.infer(MODEL, {"IMAGE": images[next(turn) % len(images)][None]}, ["LOGITS"])

    _, off = cpu_per_call(requests, infer, triton)
    client.update_trace_settings(MODEL, tracing_settings(4))
    _, on = cpu_per_call(requests, infer, triton)
    client.update_trace_settings(MODEL, TRACING_OFF)
    tail = TraceTail(Path(config.trace_dir), config.trace_prefix, MODEL)
    files, samples, answers = tail.files(), [], []
    parse, _ = cpu_per_call(len(files), lambda: samples.extend(tail.take(files[len(samples)])[1]), triton)

    def replay() -> None:
        sample = samples[len(answers)]
        answers.append(client.infer(candidate_name(MODEL), sample.inputs, list(sample.outputs)).outputs)

    replay_client, replay_triton = cpu_per_call(len(samples), replay, triton)
    accumulators: dict[str, TensorAccumulator] = {}
    compared = iter(range(len(samples)))

    def compare() -> None:
        index = next(compared)
        for name, served in samples[index].outputs.items():
            accumulators.setdefault(name, TensorAccumulator()).add(answers[index][name], served)

    def beat() -> None:  # what the worker's beat does when something changed
        client.inference_stats(candidate_name(MODEL))
        write_state(state, read_state(state))  # type: ignore[arg-type]

    return [("Triton: a production request, untraced", off),
            ("Triton: tracing, per traced request", (on - off) * 4),
            ("worker: read, parse, delete a trace file", parse),
            ("worker: replay, client side", replay_client),
            ("Triton: the replay", replay_triton),
            ("worker: compare", cpu_per_call(len(samples), compare, triton)[0]),
            ("worker: one look at the trace folder", cpu_per_call(1000, tail.files, triton)[0]),
            ("worker: a heartbeat (statistics, state file)", cpu_per_call(200, beat, triton)[0])]


def per_sample(requests: int) -> None:
    """CPU per traced request and per sample, part by part, on an otherwise idle server."""
    tmp = Path(tempfile.mkdtemp(prefix="shadow-cost-"))
    repository, state, server = sample_stack(tmp)
    try:
        os.environ["ORCH_ALLOW_UNSIGNED"] = "1"
        orch = Orchestrator(Settings(repository=repository, state_dir=state, triton_url=server.url, actor="bench"))
        version = orch.import_package(write_sample_package(tmp / "pkg", Variant.BASELINE)).version
        start_shadow(orch, MODEL, version, run_worker=lambda *_: None)  # the candidate, no worker
        shadow = read_state(state / MODEL)
        assert shadow is not None and server.process is not None
        client = Triton(server.url)
        cost_round(client, shadow.config, state / MODEL, requests // 4, server.process.pid)  # warms paths up
        rows = cost_round(client, shadow.config, state / MODEL, requests, server.process.pid)
        client.close()
        stop_shadow(orch, MODEL)
        print(f"CPU time per call, µs ({requests} requests, every 4th traced; one core is 1e6 µs/s)")
        for name, us in rows:
            print(f"  {name:<44}{us:>9.0f}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=8, help="windows per state (each beside an off window)")
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--sample-rate", type=float, default=DEFAULT_SAMPLE_RATE)
    parser.add_argument("--isolate", action="store_true", help="measure each part of the cost on its own")
    parser.add_argument("--per-sample", action="store_true", help="CPU per traced request and per sample instead")
    parser.add_argument("--requests", type=int, default=2000, help="--per-sample: requests per measurement")
    parser.add_argument("--parse-only", help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help="write every window's figures here (JSON lines)")
    args = parser.parse_args()
    if args.parse_only:
        parse_only_main(args.parse_only)
        return
    if args.per_sample:
        per_sample(args.requests)
        return
    states = ISOLATED if args.isolate else STATES
    tmp = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    repository, state, server = sample_stack(tmp)  # tracing available, off: the launcher adds the trace file
    parse_only = None
    try:
        os.environ["ORCH_ALLOW_UNSIGNED"] = "1"  # a throwaway repository: the bench signs nothing
        orch = Orchestrator(Settings(repository=repository, state_dir=state, triton_url=server.url, actor="bench"))
        version = orch.import_package(write_sample_package(tmp / "pkg", Variant.BASELINE)).version
        start_shadow(orch, MODEL, version, sample_rate=args.sample_rate)  # a detached worker, as in production
        shadow = read_state(state / MODEL)
        assert shadow is not None and shadow.pid is not None
        if args.isolate:
            parse_only = spawn_parser(shadow.config, tmp)
        control = Triton(server.url)
        switch = Switch(control, shadow.config, shadow.pid, parse_only.pid if parse_only else None)
        assert server.process is not None
        with Clients(server.url, args.threads) as load:
            switch.enter("off")
            time.sleep(2.0)
            windows = measure(load, switch, schedule(states, args.windows), args.window_s, server.process.pid)
            switch.resume_all()
        control.close()
        result = stop_shadow(orch, MODEL)
        print(f"load: {args.threads} client threads, {args.windows} x {args.window_s:g} s windows per state, "
              f"sample rate {args.sample_rate:g}; medians over windows")
        ratios = report(windows, states)
        if args.raw:
            args.raw.write_text("".join(json.dumps(asdict(w)) + "\n" for w in windows))
        p99, rps = ratios["on"]
        print(f"p99 overhead ratio on/off: {p99:.3f} (target <= 1.03); throughput ratio {rps:.3f}; "
              f"compared {result.report.compared}, dropped {result.report.dropped}")
    finally:
        if parse_only is not None:
            os.kill(parse_only.pid, signal.SIGCONT)
            parse_only.terminate()
            parse_only.wait(15)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
