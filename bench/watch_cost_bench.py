#!/usr/bin/env python3
"""What watching costs at steady state: the watcher's CPU and memory, and Triton's CPU for its probes.

    scripts/bench watch-cost [--models 1,10] [--runs 3] [--seconds 15] [--bake-s 5] [--old-tree DIR]

N copies of the sample classifier on the embedded CPU Triton, no client traffic, watched by a
real ``orchestrate watch`` process, under two policies measured in turn in the same run:
  budget          the default probe budget (probe_budget 1% of the device, split among the watched
                  models; bake_budget 20%), after a short bake
  every interval  probe_budget and bake_budget 1.0: a probe every interval_s whatever it costs
                  (what the watcher did before the budget)
With ``--old-tree DIR`` (a checkout of an older version, e.g. ``git archive <commit> | tar -x -C DIR``)
the watcher of that code is measured too, under its own defaults. Each measure starts a fresh
watcher, waits out the bake and the start-up, then reads over ``--seconds``:
  watcher CPU     % of one core of the watcher process, and its resident memory
  Triton CPU      % of one core of the server and its python-backend stubs, less what the server
                  uses with no watcher (measured first): the watcher's requests
  spent           share of the device's time the probes used, counted by Triton (compute time of
                  every execution over the window: there is no other traffic), and as the watcher
                  reports it (orchestrator_probe_spent_ratio), beside the budget in force
Medians over ``--runs`` (the policies alternate, so drift of the machine hits both alike).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import MODEL, ROOT, TICKS, process_usage, stop_watcher
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton, free_ports

POLICIES = {
    "budget": {"probe_budget": 0.01, "bake_budget": 0.2},
    "every interval": {"probe_budget": 1.0, "bake_budget": 1.0},
}


@dataclass(frozen=True)
class Measure:
    watcher_cpu: float  # % of a core
    watcher_rss_mib: float
    triton_cpu: float  # % of a core, over the server's own idle use
    probes_per_s: float  # per model
    spent_triton: float  # share of device time, median over the models
    spent_watcher: float
    budget: float


def classifier_copies(work: Path, count: int) -> tuple[Path, Path, list[str]]:
    """A repository and state folder holding ``count`` copies of the sample classifier, and nothing else."""
    repository, state, names = work / "model_repository", work / "orchestrator_state", []
    for i in range(count):
        name = f"{MODEL}{i}"
        names.append(name)
        shutil.copytree(ROOT / "model_repository" / MODEL, repository / name)
        config = repository / name / "config.pbtxt"
        config.write_text(config.read_text().replace(f'name: "{MODEL}"', f'name: "{name}"'))
        meta = repository / name / "1" / "meta.yaml"
        meta.write_text(meta.read_text().replace(f"model: {MODEL}\n", f"model: {name}\n"))
        shutil.copytree(ROOT / "orchestrator_state" / MODEL, state / name)
    return repository, state, names


def set_watch(state: Path, names: list[str], watch: dict[str, object] | None) -> None:
    for name in names:
        path = state / name / "policy.yaml"
        policy = yaml.safe_load(path.read_text()) or {}
        policy.pop("watch", None)
        if watch is not None:
            policy["watch"] = watch
        path.write_text(yaml.safe_dump(policy))


def group_cpu(leader: int) -> float:
    """CPU seconds of every live process in ``leader``'s process group (the server and its stubs)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == leader:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def compute_s(triton: Triton, names: list[str]) -> dict[str, float]:
    return {name: sum(s.compute_ns for s in triton.execution_stats(name).values()) / 1e9 for name in names}


def exported(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def watcher_value(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def measure_once(server: EmbeddedTriton, env: dict[str, str], names: list[str], seconds: float, settle_s: float,
                 idle_triton: float, work: Path, tree: Path | None) -> Measure:
    port = free_ports(1)[0]
    cwd = tree or ROOT
    run_env = dict(env, PYTHONPATH=str(cwd)) if tree else env
    watcher = subprocess.Popen([sys.executable, "-m", "orchestrator", "watch", "--metrics-port", str(port),
                                "--metrics-address", "127.0.0.1"], env=run_env, cwd=cwd,
                               stderr=(work / "watch.log").open("a"))
    triton = Triton(server.url)
    try:
        time.sleep(settle_s)
        assert server.process is not None and watcher.poll() is None, (work / "watch.log").read_text()[-2000:]
        cpu0, _ = process_usage(watcher.pid)
        triton0, stats0, at0 = group_cpu(server.process.pid), compute_s(triton, names), time.monotonic()
        before = exported(port) if tree is None else {}
        time.sleep(seconds)
        cpu1, rss = process_usage(watcher.pid)
        triton1, stats1, at1 = group_cpu(server.process.pid), compute_s(triton, names), time.monotonic()
        after = exported(port) if tree is None else {}
    finally:
        triton.close()
        stop_watcher(watcher)
    wall = at1 - at0
    probes = [watcher_value(after, "orchestrator_probes_total", model=n) -
              watcher_value(before, "orchestrator_probes_total", model=n) for n in names]
    budget = max((watcher_value(after, "orchestrator_probe_budget_ratio", model=names[0], phase=phase)
                  for phase in ("bake", "steady")), default=0.0)
    return Measure(
        watcher_cpu=(cpu1 - cpu0) / wall * 100, watcher_rss_mib=rss / 2**20,
        triton_cpu=max(0.0, (triton1 - triton0) / wall * 100 - idle_triton),
        probes_per_s=statistics.median(probes) / wall if tree is None else float("nan"),
        spent_triton=statistics.median((stats1[n] - stats0[n]) / wall for n in names),
        spent_watcher=statistics.median(watcher_value(after, "orchestrator_probe_spent_ratio", model=n)
                                        for n in names),
        budget=budget)


def bench_models(count: int, args: argparse.Namespace, work: Path) -> dict[str, list[Measure]]:
    repository, state, names = classifier_copies(work / f"{count}-models", count)
    server = EmbeddedTriton(repository, work / f"{count}-triton", load_models=tuple(names)).start()
    env = dict(os.environ, ORCH_REPOSITORY=str(repository), ORCH_STATE_DIR=str(state),
               ORCH_TRITON_URL=server.url, ORCH_TRITON_METRICS_URL=server.metrics_url, ORCH_ACTOR="bench")
    modes = list(POLICIES) + (["old code"] if args.old_tree else [])
    results: dict[str, list[Measure]] = {mode: [] for mode in modes}
    try:
        assert server.process is not None
        time.sleep(2)
        idle0, at0 = group_cpu(server.process.pid), time.monotonic()
        time.sleep(10)
        idle = (group_cpu(server.process.pid) - idle0) / (time.monotonic() - at0) * 100
        print(f"{count} model(s): Triton with no watcher {idle:.1f}% of a core", flush=True)
        for run in range(args.runs):
            for mode in modes:
                old = mode == "old code"
                set_watch(state, names, None if old else {**POLICIES[mode], "bake_s": args.bake_s})
                found = measure_once(server, env, names, args.seconds, args.bake_s + args.settle_s, idle, work,
                                     args.old_tree if old else None)
                results[mode].append(found)
                print(f"  run {run + 1} {mode:<14} watcher {found.watcher_cpu:5.1f}% CPU "
                      f"{found.watcher_rss_mib:4.0f} MiB, Triton {found.triton_cpu:5.1f}%, "
                      f"spent {found.spent_triton:.2%}", flush=True)
    finally:
        server.stop()
    return results


def median(measures: list[Measure], field: str) -> float:
    return statistics.median(getattr(m, field) for m in measures)


def report(all_results: dict[int, dict[str, list[Measure]]], args: argparse.Namespace) -> None:
    print(f"\nwatch cost at steady state: copies of the sample classifier on the embedded CPU Triton, no client "
          f"traffic, bake_s {args.bake_s:g}, medians of {args.runs} x {args.seconds:g} s\n")
    print(f"{'models':>6}  {'policy':<15} {'watcher CPU':>11} {'RSS':>8} {'Triton CPU':>10} {'probes/s':>9} "
          f"{'budget':>7} {'spent (Triton)':>14} {'spent (watcher)':>15}")
    for count, results in all_results.items():
        for mode, measures in results.items():
            probes, own = median(measures, "probes_per_s"), mode != "old code"
            budget = f"{median(measures, 'budget')*100:g}%" if own else "-"
            reported = f"{median(measures, 'spent_watcher'):.2%}" if own else "-"
            print(f"{count:>6}  {mode:<15} {median(measures, 'watcher_cpu'):10.1f}% "
                  f"{median(measures, 'watcher_rss_mib'):5.0f} MiB {median(measures, 'triton_cpu'):9.1f}% "
                  f"{f'{probes:.1f}' if own else '-':>9} {budget:>7} {median(measures, 'spent_triton'):13.2%} "
                  f"{reported:>15}")
    print()
    for count, results in all_results.items():
        for baseline in [m for m in ("every interval", "old code") if m in results]:
            ratio = {f: median(results["budget"], f) / max(1e-9, median(results[baseline], f))
                     for f in ("watcher_cpu", "triton_cpu", "watcher_rss_mib")}
            print(f"{count:>3} model(s), budget / {baseline}: watcher CPU x{ratio['watcher_cpu']:.2f}, "
                  f"Triton CPU x{ratio['triton_cpu']:.2f}, RSS x{ratio['watcher_rss_mib']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="1,10", help="comma-separated model counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window of each run")
    parser.add_argument("--bake-s", type=float, default=5.0, help="the policy's bake_s, waited out before measuring")
    parser.add_argument("--settle-s", type=float, default=5.0, help="start-up left out after the bake")
    parser.add_argument("--old-tree", type=Path, help="a checkout of older code: its watcher measured too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-watch-cost-"))
    try:
        results = {count: bench_models(count, args, work) for count in (int(c) for c in args.models.split(","))}
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
