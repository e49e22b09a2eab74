"""Drift: what sampling production outputs costs production, and how fast a drifting version is caught.

    scripts/bench drift [--pairs 4] [--window-s 8] [--threads 4] [--runs 10]

Cost: a real ``orchestrate watch`` process with the default policy, restarted for every
window, alternately with drift sampling off (``samples_per_s: 0``, the default) and on (2
production outputs a second traced by Triton); each window is measured after the watcher
settled. Prints client p50 / p99 / throughput per state, the on/off ratios (baseline: off,
in the same run), the watcher's CPU, and the outputs it sampled.

Detection: clients send images brighter than any in the golden set; the drift rule runs at
``rollback`` with short windows (20 outputs, a 5-window baseline, 2 windows to decide, 20
samples/s). v1 records its baseline; then each run promotes a version that calls every
bright image class 0 (it passes promote's golden checks and the probes) and waits for the
watcher's rollback. detection = first bad response -> rollback decision; recovery = first
bad response -> every later request answered by v1. Expected about
for_checks x window / samples_per_s = 2 s plus the 1 s sampling cadence.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import MODEL, Clients, measure, pct, row, sample_stack, start_watcher, stop_watcher
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.sample import sample_images, write_faulty_package
from orchestrator.settings import Settings
from orchestrator.triton.embedded import free_ports
from orchestrator.usecases.orchestrator import Orchestrator

FAST_DRIFT = {"severity": "rollback", "window": 20, "baseline_windows": 5, "for_checks": 2, "samples_per_s": 20}


def set_watch(state: Path, watch: dict[str, Any]) -> None:
    path = state / MODEL / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["watch"] = watch
    path.write_text(yaml.safe_dump(policy))


def sampled(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "orchestrator_watch_production_samples_total")


def cost(args: argparse.Namespace, work: Path, state: Path, url: str, env: dict[str, str]) -> None:
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    samples = 0.0
    images = sample_images(400, seed=31)[0]
    with Clients(url, args.threads, images) as clients:
        for index in range(2 * args.pairs):
            state_name = "on" if index % 2 else "off"
            set_watch(state, {"rules": {"drift": {"samples_per_s": 2 if state_name == "on" else 0}}})
            port = free_ports(1)[0]
            watcher = start_watcher(env, port, work / "watch.log")
            time.sleep(3.0)  # started, first probes and scrapes done, tracing armed at the traffic's rate
            before = sampled(port)
            clients.window = state_name
            usage, _ = measure(watcher.pid, args.window_s)
            clients.window = "switching"
            if state_name == "on":
                samples += sampled(port) - before
            cpu[state_name].append(usage)
            stop_watcher(watcher)
    rows = {}
    for state_name in ("off", "on"):
        ms = np.array([a.ms for a in clients.in_window(state_name)])
        rows[state_name] = (np.percentile(ms, 50), np.percentile(ms, 99), len(ms) / (args.pairs * args.window_s))
    print(f"\ncost of drift sampling: {args.threads} client threads, {args.pairs} x {args.window_s:g} s windows "
          f"per state, a fresh watcher per window")
    print(f"{'drift':<8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'watcher CPU':>13}")
    for name, (p50, p99, rps) in rows.items():
        print(f"{name:<8}{p50:>9.3f}{p99:>9.3f}{rps:>9.0f}{statistics.fmean(cpu[name]):>12.1f}%")
    print(f"on/off: p50 {rows['on'][0] / rows['off'][0]:.3f}, p99 {rows['on'][1] / rows['off'][1]:.3f}, "
          f"throughput {rows['on'][2] / rows['off'][2]:.3f}; outputs sampled "
          f"{samples / (args.pairs * args.window_s):.1f}/s (budget 2/s)")


def detection(args: argparse.Namespace, work: Path, repository: Path, state: Path, url: str,
              env: dict[str, str]) -> None:
    set_watch(state, {"rules": {"drift": FAST_DRIFT}})
    trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)  # signatures are not what is timed
    orch = Orchestrator(Settings(repository, state_dir=state, triton_url=url, actor="bench"), trust=trust)
    store = orch.repository.model(MODEL)
    bright = (sample_images(400, seed=32)[0] + np.float32(0.5)).astype(np.float32)
    found: dict[str, list[float]] = {"detection": [], "recovery": [], "failed": []}
    missed = 0
    watcher = start_watcher(env, free_ports(1)[0], work / "watch.log")
    try:
        with Clients(url, args.threads, bright) as clients:
            deadline = time.monotonic() + 180
            while not any(r.action == "baseline" and r.to_version == 1 for r in store.journal.read().records):
                if time.monotonic() > deadline:
                    raise SystemExit("v1 recorded no drift baseline in 180 s: see " + str(work / "watch.log"))
                time.sleep(0.2)
            for run in range(args.runs):
                mark = work / f"first-bad-{run}"
                package = write_faulty_package(work / f"pkg-{run}", "drift", 0, mark)
                version = orch.import_package(package).version
                since = store.journal.cursor()
                orch.promote(MODEL, version)
                rollback, until = None, time.monotonic() + 60
                while rollback is None and time.monotonic() < until:
                    time.sleep(0.05)
                    rollback = next((r for r in store.journal.read_since(since)[0] if r.action == "rollback"
                                     and r.actor == "watch" and r.result == "succeeded"), None)
                if rollback is None or not mark.exists():
                    missed += 1
                    orch.rollback(MODEL, reason="bench: watcher missed it")
                    continue
                first_bad = float(mark.read_text())
                started = next(r for r in store.journal.read_since(since)[0]
                               if r.op == rollback.op and r.result == "started")
                time.sleep(1.0)
                answers = clients.since(first_bad - 0.001)
                last_bad = max((a.sent for a in answers if a.version != rollback.to_version), default=first_bad)
                found["detection"].append(datetime.fromisoformat(started.time).timestamp() - first_bad)
                found["recovery"].append(max(0.0, last_bad - first_bad))
                found["failed"].append(sum(1 for a in answers if a.version is None))
    finally:
        stop_watcher(watcher)
    window, checks, rate = FAST_DRIFT["window"], FAST_DRIFT["for_checks"], FAST_DRIFT["samples_per_s"]
    print(f"\ndrifting version (class 0 for every live image), {args.runs} runs, drift rule: window {window}, "
          f"{checks} windows to decide, {rate} samples/s (expected about {checks * window / rate:.0f} s + the 1 s "
          f"cadence)")
    print(f"{len(found['detection'])} recovered, {missed} missed; failed client requests per run: max "
          f"{max(found['failed'] or [0]):.0f}")
    print(row("detection", found["detection"]))
    print(row("recovery", found["recovery"]))
    if found["recovery"]:
        print(f"  recovery p95 {pct(found['recovery'], 0.95):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="off/on window pairs for the cost")
    parser.add_argument("--window-s", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10, help="drifting versions promoted")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-drift-bench-"))
    repository, state, server = sample_stack(work)
    env = dict(os.environ, ORCH_REPOSITORY=str(repository), ORCH_STATE_DIR=str(state), ORCH_TRITON_URL=server.url,
               ORCH_TRITON_METRICS_URL=server.metrics_url, ORCH_ALLOW_UNSIGNED="1")
    try:
        if args.pairs:
            cost(args, work, state, server.url, env)
        if args.runs:
            detection(args, work, repository, state, server.url, env)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
