#!/usr/bin/env python3
"""Promote and rollback timings on the embedded CPU Triton, under client load.

    scripts/bench [--runs 20] [--threads 4]

Per run, with client threads inferring throughout:
  * baseline: a bare ``load_model`` adding v2 to the policy (what a hand-rolled script does,
    with no checks), then back to v1;
  * promote v2 through the orchestrator (candidate load, warm-up, golden checks, switch);
  * rollback to v1 through the orchestrator (v1 resident: no load).
Reports median / p95 / max, the promote/baseline ratio, the time from command start until
every newly sent request is answered by the target version, and failed client requests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.delivery.trust import TrustPolicy  # noqa: E402
from orchestrator.sample import Variant, golden_set, write_sample_package  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.store.metafile import Verification, VersionStatus  # noqa: E402
from orchestrator.store.modelconfig import to_json  # noqa: E402
from orchestrator.triton.client import Triton  # noqa: E402
from orchestrator.triton.embedded import EmbeddedTriton  # noqa: E402
from orchestrator.usecases.orchestrator import Orchestrator  # noqa: E402

MODEL = "classifier"


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
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"{name:<46} median {statistics.median(ordered) * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms   "
            f"max {ordered[-1] * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    repository, state = work / "model_repository", work / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository)
    shutil.copytree(ROOT / "orchestrator_state", state)
    server = EmbeddedTriton(repository, work / "triton", load_models=(MODEL,)).start()
    try:
        trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)  # the bench times switches, not signatures
        orchestrator = Orchestrator(Settings(repository, state_dir=state, triton_url=server.url, actor="bench"),
                                    trust=trust)
        orchestrator.import_package(write_sample_package(work / "pkg", Variant.BETTER))
        store = orchestrator.repository.model(MODEL)
        control = Triton(server.url)
        control.load(MODEL)  # Triton re-instantiates a --load-model model once on the first load call
        clients = Clients(server.url, args.threads)
        for worker in clients.workers:
            worker.start()
        time.sleep(0.5)
        bare, promote, promote_switch, rollback, rollback_switch = [], [], [], [], []
        bench_start = time.monotonic()
        for run in range(args.runs):
            # Baseline: the same version made to serve by a bare load_model, no checks.
            started = time.monotonic()
            control.load(MODEL, to_json(store.write_resident(store.snapshot(), (1, 2)).config))
            bare.append(time.monotonic() - started)
            control.load(MODEL, to_json(store.write_resident(store.snapshot(), (1,)).config))
            control.wait_unloaded(MODEL, {2}, 30)
            store.set_verification(2, Verification(status=VersionStatus.UNVERIFIED))

            started = time.monotonic()
            orchestrator.promote(MODEL, 2)
            ended = time.monotonic()
            promote.append(ended - started)
            promote_switch.append(clients.switch_time(started, ended, 2))
            time.sleep(0.2)

            started = time.monotonic()
            orchestrator.rollback(MODEL, reason=f"bench run {run}")
            ended = time.monotonic()
            rollback.append(ended - started)
            rollback_switch.append(clients.switch_time(started, ended, 1))
            time.sleep(0.2)
        failed = clients.failures(bench_start)
        clients.stop.set()
        for worker in clients.workers:
            worker.join(10)
        total = len(clients.answers)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nembedded CPU Triton, python backend, {args.threads} client threads, {args.runs} runs each\n")
    print(summary("baseline: bare load_model of v2", bare))
    print(summary("promote v2 (checks + switch), command time", promote))
    print(summary("promote: start -> all new requests on v2", promote_switch))
    print(summary("rollback to v1 (resident), command time", rollback))
    print(summary("rollback: start -> all new requests on v1", rollback_switch))
    print(f"\npromote / bare load_model (median ratio): {statistics.median(promote) / statistics.median(bare):.1f}x")
    print(f"rollback switch / bare load_model (median ratio): "
          f"{statistics.median(rollback_switch) / statistics.median(bare):.2f}x")
    print(f"client requests: {total}, failed: {failed}")


if __name__ == "__main__":
    main()
