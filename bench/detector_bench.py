#!/usr/bin/env python3
"""The sample detector behind its ensemble: what the gates see, what watching costs, how fast it recovers.

    scripts/bench detector variants [--runs 5]        mAP of every variant; promote time of the better one
    scripts/bench detector overhead [--windows 6]     production throughput and p99, watcher on vs off
    scripts/bench detector anomalies [--runs 20]      detection and recovery per anomaly kind, in the bake
                                                      period and after it (steady-state budget)

Client threads call the ensemble ``detection`` on the embedded CPU Triton as fast as it answers (saturating
load). ``overhead`` alternates windows with the watcher process running and stopped (SIGSTOP: no probe, no
scrape) after its bake period, then measures the bake period the same way right after a promote.
``anomalies`` promotes versions that turn bad after some production requests (their runner records the wall
time of the first bad answer) and waits for the watcher's rollback:
  detection = first bad answer -> the watcher's rollback decision (journal)
  recovery  = first bad answer -> the last bad answer any client got (errors, NaN, or boxes that do not
              match v1's for that frame)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, measure, pct, row, start_watcher, stop_watcher
from orchestrator.core.detection import agreement, decode
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.sample.detector import (
    ENSEMBLE,
    MODEL,
    OUTPUTS,
    DetectorVariant,
    golden_frames,
    golden_map,
    golden_outputs,
    write_detector_package,
    write_faulty_detector_package,
)
from orchestrator.settings import Settings
from orchestrator.store.golden import load_golden
from orchestrator.store.modelconfig import to_json
from orchestrator.store.repository import ModelStore
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton, free_ports
from orchestrator.triton.golden import run_golden
from orchestrator.usecases.orchestrator import Orchestrator

ENTRIES = ("detector_pre", MODEL, "detector_nms", ENSEMBLE)
FRAMES = 32  # distinct frames the clients send in turn


@dataclass(frozen=True)
class Answer:
    sent: float  # wall time
    ms: float
    good: bool | None  # None: failed; False: NaN or boxes unlike v1's for the frame


class DetectionClients:
    """Threads calling the ensemble back to back, each answer judged against v1's answer for that frame."""

    def __init__(self, url: str, threads: int) -> None:
        self.url, self.window = url, "warmup"
        self.frames = golden_frames()[:FRAMES]
        self.expected = decode(golden_outputs(DetectorVariant.BASELINE, self.frames))
        self.answers: list[tuple[str, Answer]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        client = Triton(self.url, timeout_s=10)
        turn = offset
        while not self.stop.is_set():
            index, turn = turn % FRAMES, turn + 1
            window, sent, started = self.window, time.time(), time.perf_counter()
            try:
                outputs = client.infer(ENSEMBLE, {"IMAGE": self.frames[index][None]}, list(OUTPUTS)).outputs
                found = decode(outputs)[0]
                good: bool | None = bool(np.isfinite(found.boxes).all()) and \
                    agreement([found], [self.expected[index]]).matched_share >= 0.5
            except Exception:  # every failure is a figure
                good = None
            with self.lock:
                self.answers.append((window, Answer(sent, (time.perf_counter() - started) * 1000.0, good)))
        client.close()

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for _, a in self.answers if a.sent >= moment]

    def in_window(self, window: str) -> list[Answer]:
        with self.lock:
            return [a for w, a in self.answers if w == window and a.good is not None]

    def __enter__(self) -> DetectionClients:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(15)


def detector_stack(work: Path, watch: dict[str, object]) -> tuple[Path, Path, EmbeddedTriton]:
    repository, state = work / "model_repository", work / "orchestrator_state"
    repository.mkdir(parents=True)
    for entry in ENTRIES:
        shutil.copytree(ROOT / "model_repository" / entry, repository / entry)
    shutil.copytree(ROOT / "orchestrator_state" / MODEL, state / MODEL)
    policy_file = state / MODEL / "policy.yaml"
    policy = yaml.safe_load(policy_file.read_text()) or {}
    policy["watch"] = watch
    policy_file.write_text(yaml.safe_dump(policy))
    server = EmbeddedTriton(repository, work / "triton", load_models=ENTRIES)
    return repository, state, server.start()


def orchestrator_of(repository: Path, state: Path, server: EmbeddedTriton) -> Orchestrator:
    trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)  # signatures are not what is timed
    return Orchestrator(Settings(repository, state_dir=state, triton_url=server.url, actor="bench"), trust=trust)


def environment(repository: Path, state: Path, server: EmbeddedTriton) -> dict[str, str]:
    return dict(os.environ, ORCH_REPOSITORY=str(repository), ORCH_STATE_DIR=str(state), ORCH_TRITON_URL=server.url,
                ORCH_TRITON_METRICS_URL=server.metrics_url)


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --- variants ------------------------------------------------------------------------------

def variants(args: argparse.Namespace) -> None:
    print("mAP on the golden set (200 frames), computed in-process with the ensemble's own pre-processing and NMS")
    print(f"  {'variant':<10} {'mAP@0.5':>8} {'mAP@.5:.95':>11}")
    for variant in DetectorVariant:
        try:
            report = golden_map(variant)
            print(f"  {variant.value:<10} {report.map50:8.3f} {report.map50_95:11.3f}")
        except ValueError as exc:
            print(f"  {variant.value:<10} {'-':>8} {'-':>11}  ({exc})")
    work = Path(tempfile.mkdtemp(prefix="orch-detector-bench-"))
    repository, state, server = detector_stack(work, {})
    try:
        orchestrator = orchestrator_of(repository, state, server)
        package = write_detector_package(work / "better", DetectorVariant.BETTER)
        times, switches, floors, bare = [], [], [], []
        store = orchestrator.repository.model(MODEL)
        control = Triton(server.url)
        with DetectionClients(server.url, args.threads) as clients:
            for _ in range(args.runs):
                version = orchestrator.import_package(package).version
                floor, load_s = by_hand(control, store, version)
                floors.append(floor)
                bare.append(load_s)
                result = orchestrator.promote(MODEL, version)
                times.append(result.duration_ms / 1000.0)
                switches.append((result.switch_ms or 0.0) / 1000.0)
                orchestrator.rollback(MODEL, reason="bench: promote again")
        control.close()
        failed = sum(1 for _, a in clients.answers if a.good is None)
        golden = orchestrator.repository.model(MODEL).attestation(version).verification.golden
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\npromote of the better detector through the ensemble, {args.runs} runs, {args.threads} client threads")
    print(row("floor", floors) + "   (by hand: candidate + its ensemble loaded, warm-up, golden set on both, "
          "a bare load_model adding the version)")
    print(row("bare load", bare) + "   (load_model adding the version to production, nothing else)")
    print(row("promote", times))
    print(row("to switched", switches))
    print(f"  promote / floor {statistics.median(times) / statistics.median(floors):.2f}x, "
          f"promote / bare load {statistics.median(times) / statistics.median(bare):.1f}x (medians)")
    print(f"  gate metrics: mAP@.5:.95 {golden.get('map50_95', 0):.3f} against served "
          f"{golden.get('served_map50_95', 0):.3f}; failed client requests {failed} of {len(clients.answers)}")


def by_hand(control: Triton, store: ModelStore, version: int) -> tuple[float, float]:
    """What a promote of ``version`` cannot do without, done by hand with no orchestrator: (seconds, of which the
    bare load_model of the version into production). Left as it was: v1 serving, the candidate entries gone."""
    snap = store.snapshot()
    assert snap.route is not None
    golden = load_golden(store.state / snap.policies.promotion.golden, snap.client_contract)
    assert golden is not None
    started = time.monotonic()
    _, entry = store.write_candidate_entry(snap, version)
    route, route_config = store.write_candidate_route(snap.route)
    control.load(entry.name, to_json(entry))
    control.load(route, to_json(route_config))
    for warm in golden.batches(8)[: snap.policies.promotion.warmup_requests]:
        control.infer(route, warm, snap.client_outputs)
    run_golden(control, route, None, golden, snap.client_outputs, 8)
    run_golden(control, snap.route.name, None, golden, snap.client_outputs, 8)
    control.unload(route)
    control.unload(entry.name)
    loading = time.monotonic()
    control.load(MODEL, to_json(store.write_resident(snap, (1, version)).config))
    ended = time.monotonic()
    control.load(MODEL, to_json(store.write_resident(store.snapshot(), (1,)).config))
    control.wait_unloaded(MODEL, {version}, 30)
    control.wait_unloaded(entry.name, None, 30)
    store.remove_candidate_routes()
    store.remove_candidate_entry()
    return ended - started, ended - loading


# --- overhead ------------------------------------------------------------------------------

def window_figures(answers: list[Answer], seconds: float) -> tuple[float, float]:
    return len(answers) / seconds, pct([a.ms for a in answers], 0.99)


def overhead(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="orch-detector-bench-"))
    watch = {"bake_s": args.bake_s}
    repository, state, server = detector_stack(work, watch)
    port = free_ports(1)[0]
    watcher = start_watcher(environment(repository, state, server), port, work / "watch.log")
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "steady": [], "bake": [], "bake-off": []}
    try:
        with DetectionClients(server.url, args.threads) as clients:
            time.sleep(args.bake_s + 3)  # past the start-up bake period
            probes_before = watcher_metric(port, "orchestrator_probes_total")
            for i in range(args.windows * 2):
                on = i % 2 == 0
                os.kill(watcher.pid, signal.SIGCONT if on else signal.SIGSTOP)
                clients.window = f"{'steady' if on else 'off'}-{i}"
                time.sleep(args.window_s)
                figures["steady" if on else "off"].append(window_figures(clients.in_window(clients.window),
                                                                         args.window_s))
            os.kill(watcher.pid, signal.SIGCONT)
            steady_probes = watcher_metric(port, "orchestrator_probes_total") - probes_before
            probe_cost = watcher_metric(port, "orchestrator_probe_cost_seconds")
            watcher_cpu, watcher_rss = measure(watcher.pid, 5)
            orchestrator = orchestrator_of(repository, state, server)
            package = write_detector_package(work / "better", DetectorVariant.BETTER)
            version = orchestrator.import_package(package).version
            orchestrator.promote(MODEL, version)
            baked = time.monotonic()
            i = 0
            while time.monotonic() - baked < args.bake_s - args.window_s:
                on = i % 2 == 0
                os.kill(watcher.pid, signal.SIGCONT if on else signal.SIGSTOP)
                clients.window = f"{'bake' if on else 'bake-off'}-{i}"
                time.sleep(min(args.window_s, max(0.5, args.bake_s - (time.monotonic() - baked))))
                figures["bake" if on else "bake-off"].append(window_figures(clients.in_window(clients.window),
                                                                            args.window_s))
                i += 1
            os.kill(watcher.pid, signal.SIGCONT)
        failed = sum(1 for _, a in clients.answers if a.good is None)
    finally:
        os.kill(watcher.pid, signal.SIGCONT)
        stop_watcher(watcher)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(key: str, index: int) -> float:
        return statistics.median(f[index] for f in figures[key]) if figures[key] else float("nan")

    print(f"\nproduction through the {ENSEMBLE} ensemble, {args.threads} client threads back to back, "
          f"{args.windows} windows of {args.window_s:g} s each way (medians)")
    print(f"  {'':<22} {'req/s':>8} {'p99 ms':>8}")
    for key in ("off", "steady", "bake-off", "bake"):
        print(f"  {key:<22} {med(key, 0):8.1f} {med(key, 1):8.1f}")
    print(f"  steady state, watcher on / off: throughput {med('steady', 0) / med('off', 0):.3f}, "
          f"p99 {med('steady', 1) / med('off', 1):.3f}  (target throughput >= 0.99)")
    print(f"  bake period, watcher on / off:  throughput {med('bake', 0) / med('bake-off', 0):.3f}, "
          f"p99 {med('bake', 1) / med('bake-off', 1):.3f}")
    print(f"  watcher process {watcher_cpu:.1f}% of a core, {watcher_rss:.0f} MiB; failed client requests {failed}")
    on_s = args.windows * args.window_s
    print(f"  steady windows: {steady_probes:.0f} probes in {on_s:g} s on, {probe_cost * 1000:.0f} ms each as debited: "
          f"{steady_probes * probe_cost / on_s:.2%} of the device while on")


def watcher_metric(port: int, name: str) -> float:
    """One sample of the watcher's exporter, summed over its label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


# --- anomalies -----------------------------------------------------------------------------

def anomalies(args: argparse.Namespace) -> None:
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="orch-detector-bench-"))
    watch = {"bake_s": args.bake_s, "max_rollbacks": 10_000, "rollback_window_s": 1.0}
    repository, state, server = detector_stack(work, watch)
    watcher = start_watcher(environment(repository, state, server), free_ports(1)[0], work / "watch.log")
    phases = ["bake"] + (["steady"] if args.steady_runs else [])
    results = {(p, k): {"detection": [], "recovery": [], "failed": []} for p in phases for k in kinds}
    missed = dict.fromkeys(results, 0)
    early: dict[str, int] = {}  # steady-phase injections that turned bad before the bake was over (not counted)
    try:
        orchestrator = orchestrator_of(repository, state, server)
        store = orchestrator.repository.model(MODEL)
        with DetectionClients(server.url, args.threads) as clients:
            time.sleep(5)
            rate = len(clients.since(time.time() - 4)) / 4.0
            if not args.after_steady:  # the version turns bad once its bake period is over
                args.after_steady = int(rate * args.bake_s * 2)  # the rate rises once probing slows
            for phase in phases:
                runs = args.runs if phase == "bake" else args.steady_runs
                for kind in kinds:
                    for run in range(runs):
                        mark = work / f"first-bad-{phase}-{kind}-{run}"
                        after = args.after if phase == "bake" else args.after_steady
                        package = write_faulty_detector_package(work / f"pkg-{kind}-{run}", kind, after, mark)
                        version = orchestrator.import_package(package).version
                        shutil.rmtree(package)
                        since = store.journal.cursor()
                        orchestrator.promote(MODEL, version)
                        promoted = time.time()
                        rollback = wait_rollback(store, since, timeout_s=after / 20 + 60)
                        if rollback is None or not mark.exists():
                            missed[(phase, kind)] += 1
                            orchestrator.rollback(MODEL, reason="bench: the watcher missed it")
                            continue
                        first_bad = float(mark.read_text())
                        if phase == "steady" and first_bad - promoted < args.bake_s:
                            early[kind] = early.get(kind, 0) + 1  # turned bad inside the bake: not this phase's
                            continue
                        started = next(r for r in store.journal.read_since(since)[0]
                                       if r.op == rollback.op and r.result == "started")
                        time.sleep(1.0)  # in-flight requests finish before recovery is judged
                        answers = clients.since(first_bad - 0.001)
                        last_bad = max((a.sent for a in answers if not a.good), default=first_bad)
                        cell = results[(phase, kind)]
                        cell["detection"].append(wall(started.time) - first_bad)
                        cell["recovery"].append(max(0.0, last_bad - first_bad))
                        cell["failed"].append(sum(1 for a in answers if a.good is None))
    finally:
        stop_watcher(watcher)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nautomatic rollback of the detector behind its ensemble, {args.threads} client threads back to back")
    for (phase, kind), cell in results.items():
        print(f"{phase} {kind}: {len(cell['detection'])} recovered, {missed[(phase, kind)]} missed; failed client "
              f"requests per injection median {statistics.median(cell['failed'] or [0]):.0f}")
        print(row("detection", cell["detection"]))
        print(row("recovery", cell["recovery"]))
    print(f"client rate {rate:.0f} requests/s; after the bake period a version turned bad after {args.after_steady} "
          f"requests; steady-phase injections that went bad inside the bake (not counted): {early or 'none'}")
    baked = [v for (p, _), c in results.items() if p == "bake" for v in c["recovery"]]
    if baked:
        print(f"\nbake period, all kinds: recovery p95 {pct(baked, 0.95) * 1000:.0f} ms (target <= 500 ms)")


def wait_rollback(store, since, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        records, _ = store.journal.read_since(since)
        found = next((r for r in records if r.action == "rollback" and r.actor == "watch"
                      and r.result == "succeeded"), None)
        if found is not None:
            return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    v = sub.add_parser("variants")
    v.add_argument("--runs", type=int, default=5)
    v.add_argument("--threads", type=int, default=2)
    o = sub.add_parser("overhead")
    o.add_argument("--windows", type=int, default=6)
    o.add_argument("--window-s", type=float, default=5.0)
    o.add_argument("--bake-s", type=float, default=40.0)
    o.add_argument("--threads", type=int, default=3)
    a = sub.add_parser("anomalies")
    a.add_argument("--runs", type=int, default=20)
    a.add_argument("--steady-runs", type=int, default=3, help="injections per kind after the bake period")
    a.add_argument("--kinds", default="nan,empty,shifted,confused,errors")
    a.add_argument("--after", type=int, default=100, help="production requests before a version turns bad")
    a.add_argument("--after-steady", type=int, default=0, help="...in the steady-state phase (0: bake_s worth)")
    a.add_argument("--bake-s", type=float, default=30.0)
    a.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"variants": variants, "overhead": overhead, "anomalies": anomalies}[args.what](args)


if __name__ == "__main__":
    main()
