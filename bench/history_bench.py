#!/usr/bin/env python3
"""What a long history costs a command: rollback and status with an empty journal and a long one.

    scripts/bench history [--runs 10] [--records 100000]

On the embedded CPU Triton, in this process: promote v2, then per run a rollback to the resident
v1 and a promote back, and a ``status`` read; first with the journal the runs themselves write,
then again after ``--records`` watcher alerts (about 280 bytes each, a busy device's years or a
flapping one's month) were appended. Prints medians and the long/empty ratio of each.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MODEL, sample_stack  # noqa: E402 - the same in the code before issue 10
from orchestrator.sample import Variant, write_sample_package  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

try:  # the layout since issue 10
    from orchestrator.core.journal import Record
    from orchestrator.delivery.trust import TrustPolicy
    from orchestrator.usecases.orchestrator import Orchestrator
    from orchestrator.usecases.status import model_status
except ImportError:  # the code before it, measured the same way for the before/after figures
    from orchestrator.journal import Record  # type: ignore[no-redef]
    from orchestrator.operations import Orchestrator  # type: ignore[no-redef]
    from orchestrator.report import model_status  # type: ignore[no-redef]
    from orchestrator.signing import TrustPolicy  # type: ignore[no-redef]


def grow(journal_path: Path, records: int) -> None:
    """Append ``records`` alerts at once (as the watcher would over time), in one write."""
    line = Record(action="anomaly", result="alert", op="0" * 12, actor="watch", from_version=2,
                  reason="resources: CPU utilization 99% (max 98%)",
                  details={"evidence": {"rule": "resources", "values": {"cpu_utilization": 0.99}},
                           "severity": "alert"}).to_json() + "\n"
    with journal_path.open("a") as handle:
        handle.write(line * records)


def measure(orchestrator: Orchestrator, runs: int) -> dict[str, list[float]]:
    store = orchestrator.repository.model(MODEL)
    found: dict[str, list[float]] = {"rollback": [], "rollback_switch": [], "promote": [], "status": []}
    for run in range(runs):
        started = time.monotonic()
        result = orchestrator.rollback(MODEL, reason=f"bench run {run}")
        found["rollback"].append(time.monotonic() - started)
        found["rollback_switch"].append(result.switch_ms / 1000.0)
        started = time.monotonic()
        model_status(orchestrator, store)
        found["status"].append(time.monotonic() - started)
        started = time.monotonic()
        orchestrator.promote(MODEL, 2, force=True)
        found["promote"].append(time.monotonic() - started)
        time.sleep(0.3)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-history-bench-"))
    repository, state, server = sample_stack(work)
    try:
        trust = TrustPolicy(state / "trusted_keys", allow_unsigned=True)
        orchestrator = Orchestrator(Settings(repository, state_dir=state, triton_url=server.url, actor="bench"),
                                    trust=trust)
        orchestrator.import_package(write_sample_package(work / "pkg", Variant.BETTER))
        orchestrator.promote(MODEL, 2)
        journal = orchestrator.repository.model(MODEL).journal
        empty = measure(orchestrator, args.runs)
        grow(journal.path, args.records)
        size_mb = journal.size() / 1e6
        long = measure(orchestrator, args.runs)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nembedded CPU Triton, {args.runs} runs each; journal of a few records, then {args.records:,} more "
          f"({size_mb:.0f} MB)\n")
    for name, label in (("rollback", "rollback command"), ("rollback_switch", "rollback: start -> target serves"),
                        ("status", "status (in-process)"), ("promote", "promote command")):
        short_ms, long_ms = statistics.median(empty[name]) * 1000, statistics.median(long[name]) * 1000
        print(f"{label:<34} empty journal median {short_ms:8.1f} ms   long journal median {long_ms:8.1f} ms   "
              f"ratio {long_ms / short_ms:5.2f}x")


if __name__ == "__main__":
    main()
