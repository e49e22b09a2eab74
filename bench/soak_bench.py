"""Does Triton survive tensor tracing under load? HTTP and gRPC clients, tracing off (baseline) and on.

Each leg starts a fresh embedded Triton, runs client threads at full speed for ``--leg-s``
seconds with the production model traced at 1 in ``--rate`` (tracing off for the baseline
legs), reads and deletes the trace files as the shadow worker and the drift sampler do, and
counts requests, failures and server deaths. A crash prints the server's signal line and
the frame that names the function it died in.

    scripts/bench soak [--rounds 1] [--leg-s 60] [--threads 4] [--rate 4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MODEL, Clients, pct, sample_stack
from orchestrator.triton.client import Triton
from orchestrator.triton.traces import tracing_settings


@dataclass
class Leg:
    protocol: str
    traced: bool
    requests: int = 0
    failures: int = 0
    traces: int = 0
    deaths: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    crash: str = ""


def last_words(log: str) -> str:
    """What a dying server said: the signal, libc's complaint, and the first frames that name a function."""
    said = []
    for line in (raw.strip() for raw in log.splitlines()):
        frame = line.split("# ", 1)[1].split(" in ")[0] if "# " in line and " in " in line else ""
        if line.startswith(("Signal", "free()", "double free", "terminate", "corrupted")) or (
                frame and not frame.startswith("0x")):
            said.append(line if not frame else frame)
    return "; ".join(said[:5])


def run_leg(leg: Leg, seconds: float, threads: int, rate: int) -> Leg:
    work = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    try:
        _, _, server = sample_stack(work)
        if leg.traced:
            control = Triton(server.url)
            control.update_trace_settings(MODEL, tracing_settings(rate))
            control.close()
        stop = threading.Event()

        def reader() -> None:
            folder = work / "triton" / "traces"
            while not stop.is_set():
                for path in folder.glob("trace.json.*"):
                    try:
                        path.read_bytes()
                        path.unlink()
                        leg.traces += 1
                    except OSError:
                        pass
                time.sleep(0.1)

        grpc_address = f"127.0.0.1:{server.grpc_port}" if leg.protocol == "grpc" else None
        tail = threading.Thread(target=reader, daemon=True)
        tail.start()
        with Clients(server.url, threads, grpc_address=grpc_address, failure_pause_s=0.05) as clients:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and server.process.poll() is None:  # type: ignore[union-attr]
                time.sleep(0.5)
        stop.set()
        tail.join(15)
        leg.requests = len(clients.answers)
        leg.failures = sum(1 for answer in clients.answers if answer.version is None)
        leg.latencies_ms = [answer.ms for answer in clients.answers if answer.version is not None]
        if server.process.poll() is not None:  # type: ignore[union-attr]
            leg.deaths += 1
            leg.crash = last_words(server.log_tail(80)) or f"exit status {server.process.returncode}"  # type: ignore[union-attr]
        server.kill()
        return leg
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1, help="legs per protocol and tracing state")
    parser.add_argument("--leg-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=int, default=4, help="trace 1 request in RATE (the shadow cap is 4)")
    args = parser.parse_args()
    totals: dict[tuple[str, bool], list[Leg]] = {}
    for round_ in range(args.rounds):
        for protocol in ("http", "grpc"):
            for traced in (False, True):
                leg = run_leg(Leg(protocol, traced), args.leg_s, args.threads, args.rate)
                totals.setdefault((protocol, traced), []).append(leg)
                print(f"round {round_ + 1} {protocol:<4} tracing {'on ' if traced else 'off'}: "
                      f"{leg.requests} requests, {leg.failures} failed, {leg.traces} traces, "
                      f"server {'DIED: ' + leg.crash if leg.deaths else 'alive'}", flush=True)
    print(f"\n{args.threads} threads at full speed, legs of {args.leg_s:g} s, tracing 1 in {args.rate}:")
    for protocol in ("http", "grpc"):
        base = [ms for leg in totals[(protocol, False)] for ms in leg.latencies_ms]
        for traced in (False, True):
            legs = totals[(protocol, traced)]
            latencies = [ms for leg in legs for ms in leg.latencies_ms]
            requests = sum(leg.requests for leg in legs)
            deaths = sum(leg.deaths for leg in legs)
            ratio = pct(latencies, 0.99) / pct(base, 0.99) if latencies and base else float("nan")
            survival = f"1 server death per {requests // deaths} requests" if deaths else "no server death"
            print(f"  {protocol:<4} tracing {'on ' if traced else 'off'}  requests {requests:>9}  "
                  f"p50 {pct(latencies, 0.5):6.2f} ms  p99 {pct(latencies, 0.99):6.2f} ms  "
                  f"p99 vs off {ratio:5.2f}  failed {sum(leg.failures for leg in legs):>5}  {survival}")


if __name__ == "__main__":
    main()
