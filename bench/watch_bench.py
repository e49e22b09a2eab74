#!/usr/bin/env python3
"""Automatic rollback under client load: detection latency and time to recovery per anomaly kind.

    scripts/bench watch [--runs 20] [--kinds nan,zeros,exploding,divergent,errors,crash]

A real ``orchestrate watch`` process (default policy: one 4-sample probe every 50 ms) watches
the embedded CPU Triton while client threads infer throughout. Each run promotes a version
that turns bad after a few hundred production requests (its model records the wall time of
its first bad response) and waits for the watcher's rollback. Per kind:
  detection = first bad response -> the watcher's rollback decision (journal)
  recovery  = first bad response -> every request sent afterwards answered by the last verified version
  failed    = client requests that failed in between
Also the watcher process's CPU and memory at idle and under load. Printed beside the seeds'
figures (Jetson Xavier NX: detection 380 ms on average, rollback 1.02-1.12 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import MODEL, Clients, measure, pct, row, sample_stack, start_watcher, stop_watcher
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.sample import write_faulty_package
from orchestrator.settings import Settings
from orchestrator.triton.embedded import free_ports
from orchestrator.usecases.orchestrator import Orchestrator


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--kinds", default="nan,zeros,exploding,divergent,errors,crash")
    parser.add_argument("--after", type=int, default=300, help="production requests before a version turns bad")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="orch-watch-bench-"))
    repository, state, server = sample_stack(work)
    env = dict(os.environ, ORCH_REPOSITORY=str(repository), ORCH_STATE_DIR=str(state), ORCH_TRITON_URL=server.url,
               ORCH_TRITON_METRICS_URL=server.metrics_url)
    port = free_ports(1)[0]
    watcher = start_watcher(env, port, work / "watch.log")
    results: dict[str, dict[str, list[float]]] = {k: {"detection": [], "recovery": [], "failed": []} for k in kinds}
    missed: dict[str, int] = dict.fromkeys(kinds, 0)
    try:
        trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)  # signatures are not what is timed
        orchestrator = Orchestrator(Settings(repository, state_dir=state, triton_url=server.url, actor="bench"),
                                    trust=trust)
        store = orchestrator.repository.model(MODEL)
        time.sleep(3)
        idle_cpu, idle_rss = measure(watcher.pid, 10)
        clients = Clients(server.url, args.threads).__enter__()
        load_cpu, load_rss = measure(watcher.pid, 10)
        for kind in kinds:
            for run in range(args.runs):
                mark = work / f"first-bad-{kind}-{run}"
                package = write_faulty_package(work / f"pkg-{kind}-{run}", kind, args.after, mark)
                version = orchestrator.import_package(package).version
                shutil.rmtree(package)
                since = store.journal.cursor()
                orchestrator.promote(MODEL, version)
                deadline = time.monotonic() + 30
                rollback = None
                while time.monotonic() < deadline and rollback is None:
                    time.sleep(0.05)
                    records, _ = store.journal.read_since(since)
                    rollback = next((r for r in records if r.action == "rollback" and r.actor == "watch"
                                     and r.result == "succeeded"), None)
                if rollback is None or not mark.exists():
                    missed[kind] += 1
                    orchestrator.rollback(MODEL, reason="bench: watcher missed it")
                    continue
                first_bad = float(mark.read_text())
                started = next(r for r in store.journal.read_since(since)[0]
                               if r.op == rollback.op and r.result == "started")
                time.sleep(1.0)  # let in-flight requests finish before judging recovery
                answers = clients.since(first_bad - 0.001)
                fallback = rollback.to_version
                last_bad = max((a.sent for a in answers if a.version != fallback), default=first_bad)
                results[kind]["detection"].append(wall(started.time) - first_bad)
                results[kind]["recovery"].append(max(0.0, last_bad - first_bad))
                results[kind]["failed"].append(sum(1 for a in answers if a.version is None))
                (store.folder / str(version)).exists()  # kept, quarantined: nothing is deleted
        clients.__exit__()
        total = len(clients.answers)
    finally:
        stop_watcher(watcher)
        server.stop()

    print(f"\nautomatic rollback on the embedded CPU Triton, {args.threads} client threads, "
          f"{args.runs} injections per kind (version turns bad after {args.after} requests)\n")
    for kind in kinds:
        r = results[kind]
        print(f"{kind}: {len(r['detection'])} recovered, {missed[kind]} missed, "
              f"failed client requests per injection: median {statistics.median(r['failed'] or [0]):.0f}, "
              f"max {max(r['failed'] or [0]):.0f}")
        print(row("detection", r["detection"]))
        print(row("recovery", r["recovery"]))
    everything = [v for r in results.values() for v in r["recovery"]]
    detections = [v for r in results.values() for v in r["detection"]]
    print(f"\nall kinds: detection mean {statistics.fmean(detections) * 1000:.0f} ms (seeds: 380 ms), "
          f"recovery p95 {pct(everything, 0.95) * 1000:.0f} ms (seeds' rollback: 1020-1120 ms; target < 500 ms)")
    print(f"watcher process: idle {idle_cpu:.1f}% CPU, {idle_rss:.0f} MiB; under load {load_cpu:.1f}% CPU, "
          f"{load_rss:.0f} MiB")
    print(f"client requests: {total}")
    print(json.dumps({"missed": missed}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
