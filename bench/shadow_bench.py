"""Production latency with shadowing off vs on, under the same client load, in alternating windows.

Starts the embedded Triton with tracing available, files the served network again as v2,
starts a detached shadow worker at the default sample rate, then switches the production
model's tracing off and on every window while client threads infer throughout. Prints
p50 / p99 / throughput per state and the p99 overhead ratio (target <= 1.03).

    scripts/bench shadow [--windows 6] [--window-s 5] [--threads 4] [--sample-rate 0.01]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import MODEL, Clients, sample_stack
from orchestrator.sample import Variant, write_sample_package
from orchestrator.settings import Settings
from orchestrator.store.shadow_state import read_state
from orchestrator.triton.client import Triton
from orchestrator.triton.traces import TRACING_OFF, shadow_tracing
from orchestrator.usecases.orchestrator import Orchestrator
from orchestrator.usecases.shadow import DEFAULT_SAMPLE_RATE, start_shadow, stop_shadow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=6, help="windows per state (off/on alternate)")
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--sample-rate", type=float, default=DEFAULT_SAMPLE_RATE)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    repository, state, server = sample_stack(tmp)  # tracing available, off: the launcher adds the trace file
    try:
        os.environ["ORCH_ALLOW_UNSIGNED"] = "1"  # a throwaway repository: the bench signs nothing
        orch = Orchestrator(Settings(repository=repository, state_dir=state, triton_url=server.url, actor="bench"))
        version = orch.import_package(write_sample_package(tmp / "pkg", Variant.BASELINE)).version
        start_shadow(orch, MODEL, version, sample_rate=args.sample_rate)  # a detached worker, as in production
        config = read_state(state / MODEL).config  # type: ignore[union-attr]
        control = Triton(server.url)
        with Clients(server.url, args.threads) as load:
            time.sleep(2.0)
            for index in range(2 * args.windows):
                on = index % 2 == 1
                control.update_trace_settings(MODEL, shadow_tracing(config.sample_rate) if on else TRACING_OFF)
                time.sleep(0.3)  # settle: requests in flight across the switch are not counted
                load.window = "on" if on else "off"
                time.sleep(args.window_s)
                load.window = "switching"
        control.close()
        result = stop_shadow(orch, MODEL)
        rows = {}
        for state_name in ("off", "on"):
            values = np.array([a.ms for a in load.in_window(state_name)])
            seconds = args.windows * args.window_s
            rows[state_name] = (np.percentile(values, 50), np.percentile(values, 99), len(values) / seconds)
        print(f"load: {args.threads} client threads, {args.windows} x {args.window_s:g} s windows per state, "
              f"sample rate {args.sample_rate:g}")
        print(f"{'shadow':<8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
        for name, (p50, p99, rps) in rows.items():
            print(f"{name:<8}{p50:>9.3f}{p99:>9.3f}{rps:>9.0f}")
        ratio = rows["on"][1] / rows["off"][1]
        print(f"p99 overhead ratio on/off: {ratio:.3f} (target <= 1.03); throughput ratio "
              f"{rows['on'][2] / rows['off'][2]:.3f}; compared {result.report.compared}, "
              f"dropped {result.report.dropped}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
