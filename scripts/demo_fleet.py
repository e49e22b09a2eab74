#!/usr/bin/env python3
"""scripts/demo fleet: a fleet rollout end to end on this machine.

A real Mosquitto, the controller (``orchestrate fleet serve``), two real devices (an embedded Triton and
``orchestrate watch --fleet`` each: a Xavier NX and a Nano) and a few hundred simulated ones (the real
agent on Triton twins; every 33rd a Nano). Two releases, each in four waves:

1. a good one: every device verifies it;
2. one that errors in production on Jetson Nanos only, after passing every local check: the error-rate
   gate fails on the Nanos that took it, they are told to revert (the rollback), the failures are put
   on hw=jetson-nano and a scoped block is proposed; the operator accepts it (``orchestrate fleet block``)
   and the rest of the fleet goes on.

Every operator step is the real CLI; the rollout is printed as ``orchestrate fleet rollout status``
shows it, each time its wave or phase changes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.fleet.lab import BuildKey, FleetLab  # noqa: E402
from orchestrator.fleet.lab_device import RealDevice  # noqa: E402
from orchestrator.fleet.rollout import Phase  # noqa: E402
from orchestrator.fleet.simulate import NANO, XAVIER, SimulatedFleet, Traffic  # noqa: E402
from orchestrator.sample import MODEL, Variant, write_faulty_package, write_sample_package  # noqa: E402

FAULT_AFTER = 20  # the promote checks send 16 requests to a candidate: this fault passes them
WAVES = [{"percent": 10}, {"percent": 30}, {"percent": 60}, {"percent": 100}]
# A Nano of the first wave's ~31 devices answers errors after FAULT_AFTER requests at one a second: the
# wave's summed error rate passes 1% about 30 s in, so the canary bakes long enough to see it.
CANARY_BAKE_S = 45


def fleet(lab: FleetLab, *args: str, grep: str | None = None) -> str:
    """Runs ``orchestrate fleet ARGS`` and prints its output (with ``grep``: only the lines holding it)."""
    print(f"\n$ orchestrate fleet {' '.join(args)}" + (f" | grep {grep}" if grep else ""), flush=True)
    done = lab.cli(*args)
    lines = (done.stdout + done.stderr).rstrip().splitlines()
    print("\n".join(line for line in lines if grep is None or grep in line), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo failed at: orchestrate fleet {' '.join(args)} (exit {done.returncode})")
    return done.stdout


def plan(lab: FleetLab, rollout: str, package: object, gates: list[dict[str, object]], bake_s: float,
         canary_bake_s: float | None = None) -> Path:
    waves = [{**WAVES[0], "bake_s": canary_bake_s}, *WAVES[1:]] if canary_bake_s is not None else WAVES
    path = lab.plan({"rollout": rollout, "model": MODEL, "package": package.to_json(),  # type: ignore[attr-defined]
                     "spread": ["hw", "site"], "defaults": {"bake_s": bake_s, "max_unavailable": "50%"},
                     "deadlines": {"ack_s": 60, "install_s": 120, "verify_slack_s": 60, "revert_s": 60},
                     "waves": waves, "gates": gates, "on_label_failure": "propose"})
    print(f"\nplan {path.name} (signed with the release key):\n{path.read_text().rstrip()}")
    return path


async def follow(lab: FleetLab, rollout: str, until: set[Phase], timeout_s: float = 300) -> Phase:
    """Prints `fleet rollout status` whenever the wave or the phase changes, until the phase is in ``until``."""
    seen: tuple[int, Phase] | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        status = lab.status(rollout)
        now = (status.rollout.wave, status.rollout.phase)
        settled = not status.states.get("reverting") and not status.states.get("told") \
            and not status.states.get("applying")
        if now != seen:
            seen = now
            await asyncio.to_thread(fleet, lab, "rollout", "status", rollout)
        if status.rollout.phase in until and (settled or not status.rollout.phase.final):
            return status.rollout.phase
        if time.monotonic() > deadline:
            raise SystemExit(f"rollout {rollout} did not get to {sorted(p.value for p in until)} in {timeout_s:g} s")
        await asyncio.sleep(0.2)


async def scenario(lab: FleetLab, sims: SimulatedFleet, real: list[RealDevice], good: object, bad: object) -> None:
    stop = asyncio.Event()
    await sims.start(connect_timeout_s=120)
    traffic = asyncio.create_task(Traffic(list(sims), 1.0).run(stop))
    try:
        everyone = sims.ids() + [d.device for d in real]
        await lab.reported(MODEL, 1, everyone, timeout_s=180)
        for device in real:
            device.start_traffic()
        await asyncio.to_thread(lambda: fleet(lab, "devices", grep="cam-"))
        print(f"(and {len(sims.ids())} simulated devices, sim-00000 ...)")
        print("\n== 1. a good release, in four waves")
        await asyncio.to_thread(fleet, lab, "rollout", "start", str(plan(lab, "v2-good", good, [
            {"name": "verified", "metric": "verified_ratio", "min": 0.95}], bake_s=2)))
        await follow(lab, "v2-good", {Phase.SUCCEEDED, Phase.HALTED, Phase.ABORTED})

        print("\n== 2. a release that errors in production on Jetson Nanos only (every local check passes)")
        await asyncio.to_thread(fleet, lab, "rollout", "start", str(plan(lab, "v3-nano-errors", bad, [
            {"name": "verified", "metric": "verified_ratio", "min": 0.95},
            {"name": "errors", "metric": "error_rate", "max": 0.01, "min_sample": 50}], bake_s=10,
            canary_bake_s=CANARY_BAKE_S)))
        phase = await follow(lab, "v3-nano-errors", {Phase.BLOCK_PROPOSED, Phase.SUCCEEDED, Phase.HALTED,
                                                     Phase.ABORTED})
        if phase is Phase.BLOCK_PROPOSED:
            print("\n== the failures concentrate on one label: the operator accepts the scoped block")
            await asyncio.to_thread(fleet, lab, "block", "v3-nano-errors")
            phase = await follow(lab, "v3-nano-errors", {Phase.SUCCEEDED, Phase.HALTED, Phase.ABORTED})
        await asyncio.to_thread(lambda: fleet(lab, "devices", grep="cam-"))
        served = sims.served_versions()
        nanos = set(sims.with_label("hw", NANO))
        on_nanos = sorted({served[d] for d in nanos})
        elsewhere = sorted({v for d, v in served.items() if d not in nanos})
        print(f"\nsimulated Nanos serve v{on_nanos}, the other simulated devices v{elsewhere}; real devices: "
              + ", ".join(f"{d.device} ({d.hardware}) v{d.served()}" for d in real))
        failed = sum(len([a for a in d.traffic.answers if a[1] is None]) for d in real if d.traffic)
        total = sum(len(d.traffic.answers) for d in real if d.traffic)
        print(f"client requests on the real devices: {total}, failed {failed} (the Nano's fault answers errors "
              f"until it is rolled back)")
        if phase is not Phase.SUCCEEDED:
            raise SystemExit(f"the second rollout ended {phase.value}")
    finally:
        stop.set()
        await traffic
        await sims.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=300, help="simulated devices (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, the store, journals)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="orch-fleet-demo-"))
    print(f"work folder: {root}")
    lab = FleetLab(root / "lab", gate_interval_s=1.0)
    real: list[RealDevice] = []
    try:
        build = BuildKey(root / "build")
        good = lab.packages.publish(build.sign(write_sample_package(root / "v2", Variant.BETTER)), "v2.tar.gz")
        bad = lab.packages.publish(build.sign(write_faulty_package(root / "v3", "errors", FAULT_AFTER,
                                                                   only_on_hardware=(NANO,))), "v3.tar.gz")
        lab.start_controller()
        real_devices = {"cam-xavier": ({"site": "plant-a", "role": "line", "hw": XAVIER}, XAVIER),
                        "cam-nano": ({"site": "plant-b", "role": "dock", "hw": NANO}, NANO)}
        print(f"starting {len(real_devices)} real devices (embedded Triton + orchestrate watch --fleet) and "
              f"{args.devices} simulated ones")
        sims, real = lab.devices(root / "devices", args.devices, build.trusted, real_devices, report_s=2.0,
                                 link_options={"keepalive_s": 30, "max_backoff_s": 2.0})
        asyncio.run(scenario(lab, sims, real, good, bad))
        print("\ndemo finished")
        return 0
    finally:
        for device in real:
            device.stop()
        lab.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
