#!/usr/bin/env python3
"""Promote and rollback timings on the embedded CPU Triton, under client load.

    scripts/bench [--runs 50] [--threads 4]

Per run, with client threads inferring throughout:
  * the floor of a promote, done by hand with no orchestrator: a bare load of v2 as the
    candidate entry, the warm-up and golden runs promote makes (candidate and served), and a
    bare ``load_model`` adding v2 to the served model; then back to v1;
  * promote v2 through the orchestrator (memory check, candidate load, warm-up, golden checks,
    switch), while a sampler records the READY instances and the memory of Triton's processes
    (server and python backend stubs) every 10 ms;
  * rollback to v1 (resident: no load): in-process on even runs, and on odd runs as an operator
    types it, ``orchestrate rollback`` in a new process (its whole start-up included): in the
    first half of the runs with no watcher, so the command does it itself; in the second half
    with a real ``orchestrate watch`` process running, which the command hands it to.
Reports median / p95 / max, promote against its floor and against one bare load, the time from
command start until every newly sent request is answered by the target, the peaks during the
promotes, and failed client requests over all the switches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import pct, sample_stack, start_watcher, stop_watcher  # noqa: E402
from orchestrator.delivery.trust import TrustPolicy  # noqa: E402
from orchestrator.sample import Variant, golden_set, write_sample_package  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.store.golden import load_golden  # noqa: E402
from orchestrator.store.meminfo import mem_available  # noqa: E402
from orchestrator.store.metafile import Verification, VersionStatus  # noqa: E402
from orchestrator.store.modelconfig import contract, to_json  # noqa: E402
from orchestrator.store.repository import candidate_name  # noqa: E402
from orchestrator.triton.client import Triton  # noqa: E402
from orchestrator.triton.embedded import free_ports  # noqa: E402
from orchestrator.triton.golden import run_golden  # noqa: E402
from orchestrator.usecases.orchestrator import Orchestrator  # noqa: E402

MODEL = "classifier"
CANDIDATE = candidate_name(MODEL)
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its children (Triton's python backend stubs are its children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if pid == root or int(fields[1]) == root:
                total += int((stat.parent / "statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


class Sampler:
    """Every 10 ms: instances of the model and its candidate entry that hold memory (READY, LOADING,
    UNLOADING), Triton's resident memory, and MemAvailable."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.instances: list[int] = []
        self.rss: list[int] = []
        self.available: list[int] = []
        self.active = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        client = Triton(self.url)
        while not self.stop.is_set():
            if self.active.is_set():
                ready = sum(1 for e in client.index() if e.name in (MODEL, CANDIDATE) and e.state.holds_files)
                self.instances.append(ready)
                self.rss.append(tree_rss(self.pid))
                self.available.append(mem_available() or 0)
            time.sleep(0.01)


class Clients:
    def __init__(self, url: str, threads: int) -> None:
        self.url, self.threads = url, threads
        self.answers: list[tuple[float, int | None]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        client = Triton(self.url)
        image = golden_set()[0][:1]
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                version: int | None = client.infer(MODEL, {"IMAGE": image}, ["LOGITS"]).version
            except Exception:
                version = None
            with self.lock:
                self.answers.append((sent, version))

    def switch_time(self, start: float, end: float, target: int) -> float:
        """Seconds from ``start`` until every request sent afterwards was answered by ``target``."""
        with self.lock:
            others = [sent for sent, version in self.answers if sent >= start and version != target]
        last_other = max(others, default=start)
        return max(0.0, min(last_other, end) - start)

    def failures(self, start: float) -> int:
        with self.lock:
            return sum(1 for sent, version in self.answers if sent >= start and version is None)


def summary(name: str, values: list[float]) -> str:
    if not values:  # a kind of run that a short --runs never reached
        return f"{name:<48} no runs"
    return (f"{name:<48} median {statistics.median(values) * 1000:8.1f} ms   p95 {pct(values, 0.95) * 1000:8.1f} ms   "
            f"max {max(values) * 1000:8.1f} ms")


def cli_env(repository: Path, state: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update({"ORCH_REPOSITORY": str(repository), "ORCH_STATE_DIR": str(state), "ORCH_TRITON_URL": url,
                "ORCH_ACTOR": "bench"})
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    repository, state, server = sample_stack(work)
    try:
        trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)  # the bench times switches, not signatures
        orchestrator = Orchestrator(Settings(repository, state_dir=state, triton_url=server.url, actor="bench"),
                                    trust=trust)
        orchestrator.import_package(write_sample_package(work / "pkg", Variant.BETTER))
        store = orchestrator.repository.model(MODEL)
        snap = store.snapshot()
        policy = snap.policies.promotion
        golden = load_golden(store.state / policy.golden, contract(snap.config))
        assert golden is not None
        batch = min(policy.batch_size, snap.config.max_batch_size) if snap.config.max_batch_size else policy.batch_size
        control = Triton(server.url)
        control.load(MODEL)  # Triton re-instantiates a --load-model model once on the first load call
        assert server.process is not None
        sampler = Sampler(server.url, server.process.pid)
        sampler.thread.start()
        clients = Clients(server.url, args.threads)
        for worker in clients.workers:
            worker.start()
        time.sleep(0.5)
        rss_idle = tree_rss(server.process.pid)
        bare, cand_load, golden_s, floor, promote, promote_switch = [], [], [], [], [], []
        rollback, rollback_switch, cli_rollback, cli_switch, handed, handed_switch = [], [], [], [], [], []
        watcher = None
        env = cli_env(repository, state, server.url)
        bench_start = time.monotonic()
        for run in range(args.runs):
            if run == args.runs // 2:
                watcher = start_watcher(env, free_ports(1)[0], work / "watch.log")
                time.sleep(3.0)  # its imports, first probes and the command socket
            # The floor: the same loads and golden runs a promote needs, by hand, no orchestrator.
            snap = store.snapshot()
            _, config = store.write_candidate_entry(snap, 2)
            started = time.monotonic()
            control.load(CANDIDATE, to_json(config))
            loaded = time.monotonic()
            for warm in golden.batches(batch)[: policy.warmup_requests]:
                control.infer(CANDIDATE, warm, snap.outputs)
            run_golden(control, CANDIDATE, None, golden, snap.outputs, batch)
            run_golden(control, MODEL, 1, golden, snap.outputs, batch)
            checked = time.monotonic()
            control.unload(CANDIDATE)  # not waited for, as promote does not wait
            started_bare = time.monotonic()
            control.load(MODEL, to_json(store.write_resident(snap, (1, 2)).config))
            ended = time.monotonic()
            cand_load.append(loaded - started)
            golden_s.append(checked - loaded)
            bare.append(ended - started_bare)
            floor.append((loaded - started) + (checked - loaded) + (ended - started_bare))
            control.load(MODEL, to_json(store.write_resident(store.snapshot(), (1,)).config))
            control.wait_unloaded(MODEL, {2}, 30)
            control.wait_unloaded(CANDIDATE, None, 30)
            store.remove_candidate_entry()
            store.set_verification(2, Verification(status=VersionStatus.UNVERIFIED))

            sampler.active.set()
            started = time.monotonic()
            orchestrator.promote(MODEL, 2)
            ended = time.monotonic()
            time.sleep(0.05)
            sampler.active.clear()
            promote.append(ended - started)
            promote_switch.append(clients.switch_time(started, ended, 2))
            time.sleep(0.2)

            started = time.monotonic()
            if run % 2:
                done = subprocess.run([sys.executable, "-m", "orchestrator", "rollback", "--reason",
                                       f"bench run {run}"], env=env, capture_output=True, text=True, check=False)
                ended = time.monotonic()
                if done.returncode != 0:
                    raise SystemExit(f"orchestrate rollback exited {done.returncode}: {done.stderr}")
                (handed if watcher else cli_rollback).append(ended - started)
                (handed_switch if watcher else cli_switch).append(clients.switch_time(started, ended, 1))
            else:
                orchestrator.rollback(MODEL, reason=f"bench run {run}")
                ended = time.monotonic()
                rollback.append(ended - started)
                rollback_switch.append(clients.switch_time(started, ended, 1))
            time.sleep(0.2)
        failed = clients.failures(bench_start)
        if watcher is not None:
            stop_watcher(watcher)
        clients.stop.set()
        sampler.stop.set()
        for worker in clients.workers:
            worker.join(10)
        total = len(clients.answers)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    print(f"\nembedded CPU Triton, python backend, {args.threads} client threads, {args.runs} runs "
          f"({2 * args.runs} switches)\n")
    print(summary("floor: bare load of v2 as the candidate", cand_load))
    print(summary("floor: warm-up + golden (candidate, served)", golden_s))
    print(summary("floor: bare load_model of v2 into the model", bare))
    print(summary("floor: the three together", floor))
    print(summary("promote v2 (checks + switch), command time", promote))
    print(summary("promote: start -> all new requests on v2", promote_switch))
    print(summary("rollback to v1 (resident), in-process", rollback))
    print(summary("rollback in-process: start -> all on v1", rollback_switch))
    print(summary("`orchestrate rollback` typed, whole process", cli_rollback))
    print(summary("`orchestrate rollback`: typed -> all on v1", cli_switch))
    print(summary("`rollback` handed to the watcher, whole process", handed))
    print(summary("`rollback` handed: typed -> all on v1", handed_switch))
    print(f"\npromote / its floor (median ratio): {median(promote) / median(floor):.2f}x")
    print(f"promote / one bare load_model (median ratio): {median(promote) / median(bare):.1f}x")
    print(f"rollback switch / bare load_model (median ratio): {median(rollback_switch) / median(bare):.2f}x")
    print(f"during promotes: peak instances holding memory (model + candidate) {max(sampler.instances, default=0)}, "
          f"Triton's processes peak {max(sampler.rss, default=0) / 2**20:.0f} MiB resident "
          f"(idle {rss_idle / 2**20:.0f} MiB), MemAvailable low {min(sampler.available, default=0) / 2**20:.0f} MiB")
    print(f"client requests: {total}, failed: {failed}")


if __name__ == "__main__":
    main()
