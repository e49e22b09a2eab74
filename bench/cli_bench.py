#!/usr/bin/env python3
"""Start-up time of `orchestrate`: wall time of whole commands, against a bare interpreter.

    scripts/bench cli [--runs 20] [--triton]

Each run executes, in turn (interleaved, so that a load change on the machine hits all alike):
  * ``python -c pass``: the interpreter's own start, the baseline;
  * ``orchestrate --help`` and ``orchestrate keygen --help``: parsing and help only;
  * ``orchestrate history`` on a private copy of the sample repository (disk only);
  * ``orchestrate status`` on the same copy, against a URL nothing listens on (``--timeout 1``:
    refused at once, "Triton unreachable"), or with ``--triton`` against an embedded Triton;
  * ``orchestrate rollback`` and ``orchestrate promote 9`` on the same copy: each up to its first
    answer (rollback: Triton unreachable, exit 9, or with ``--triton`` "no verified version to roll
    back to", exit 4; promote: no version 9, exit 2), i.e. its imports and its read of the disk.
Reports median and p90 of each and the ratio of the medians to the baseline's. One untimed
run of each comes first (it writes the bytecode caches and fills the page cache).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import pct, sample_stack  # noqa: E402

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def orchestrate() -> list[str]:
    """The installed entry point beside this interpreter (what a user runs), else ``python -m orchestrator``."""
    script = Path(sys.executable).with_name("orchestrate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "orchestrator"]


def timed(command: list[str], env: dict[str, str], cwd: Path, codes: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in codes:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


def summary(name: str, values: list[float], baseline: float) -> str:
    median = statistics.median(values)
    return (f"{name:<34} median {median * 1000:7.1f} ms   p90 {pct(values, 0.9) * 1000:7.1f} ms   "
            f"{median / baseline:5.1f}x baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--triton", action="store_true", help="time `status` against an embedded Triton")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-cli-bench-"))
    server = None
    try:
        if args.triton:
            repository, _, server = sample_stack(work)
            url, status_name = server.url, "orchestrate status (embedded Triton)"
        else:
            repository = work / "model_repository"
            shutil.copytree(ROOT / "model_repository", repository)
            shutil.copytree(ROOT / "orchestrator_state", work / "orchestrator_state")
            url, status_name = UNREACHABLE, "orchestrate status (unreachable)"
        # No ORCH_* of the caller's shell; and bytecode caches written, as on a user's install (under
        # PYTHONDONTWRITEBYTECODE every run would compile the package's sources again).
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k != "PYTHONDONTWRITEBYTECODE"}
        cli = orchestrate()
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "orchestrate --help": [*cli, "--help"],
            "orchestrate keygen --help": [*cli, "keygen", "--help"],
            "orchestrate history": [*cli, "-r", str(repository), "history"],
            status_name: [*cli, "-r", str(repository), "--url", url, "--timeout", "1", "status"],
            "orchestrate rollback (to its answer)": [*cli, "-r", str(repository), "--url", url, "--timeout", "1",
                                                     "rollback"],
            "orchestrate promote 9 (no such version)": [*cli, "-r", str(repository), "--url", url, "promote", "9"],
        }
        # status exits with its verdict: 0 healthy, 9 when the Triton it asks is not there.
        codes = {"orchestrate rollback (to its answer)": (4, 9), "orchestrate promote 9 (no such version)": (2,),
                 status_name: (0, 9)}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for name, command in commands.items():
            timed(command, env, work, codes.get(name, (0,)))
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command, env, work, codes.get(name, (0,))))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    baseline = statistics.median(times["python -c pass (baseline)"])
    print(f"\n`orchestrate` start-up ({' '.join(cli)}), {args.runs} interleaved runs each, {os.cpu_count()} CPUs\n")
    for name, values in times.items():
        print(summary(name, values, baseline))


if __name__ == "__main__":
    main()
