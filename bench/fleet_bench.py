"""scripts/bench fleet: a rollout across a fleet on this machine, time-scaled, in one run.

A real Mosquitto, the controller as ``orchestrate fleet serve`` (its own process), ``--devices`` simulated
devices (the real agent on Triton twins running the sample's packages, spread over ``--processes``
processes: ``fleet/lab_shards.py``) and ``--real``
real ones (an embedded Triton serving the sample and ``orchestrate watch --fleet``, with a client thread
each). Two releases, both in four waves (10, 30, 60, 100 %):

1. a good one, to every device: how long each wave took, and every real device's client requests
   (none may fail);
2. one that errors in production only (after the promote checks, so every local gate passes it), with
   client traffic on the first wave's devices: the fleet's error-rate gate fails in that wave. A tenth of the
   devices that took it go offline before the halt and come back after it.

A monitor on the broker (the controller's credentials, ``orch/v1/#``) sees every message: it counts
them, keeps each device's latest report, and computes the error-rate gate from those reports exactly as
the plan states it, so "the gate's condition first held" is a time, as is the first revert document
(the halt) and each device's ``reverted`` event. Baselines from the same run: the gate interval (the
halt is due within one), and the devices' own rollbacks (their journals' ``duration_ms``): what the
fleet adds on top of a local switch.

    scripts/bench fleet [--devices 1000] [--processes 2] [--real 3] [--report 10] [--gate 1] [--skip-good]
                        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import pct, process_usage
from orchestrator.errors import FleetError
from orchestrator.fleet import topics
from orchestrator.fleet.lab import BuildKey, FleetLab, memory_folder
from orchestrator.fleet.lab_device import RealDevice
from orchestrator.fleet.lab_shards import ShardedFleet
from orchestrator.fleet.simulate import XAVIER, standard_labels
from orchestrator.fleet.status import RolloutStatus
from orchestrator.fleet.transport import BrokerAddress, Link, Message
from orchestrator.sample import MODEL, Variant, write_faulty_package, write_sample_package

WAVES = [{"percent": 10}, {"percent": 30}, {"percent": 60}, {"percent": 100}]
# The sample's promote checks send 16 requests to a candidate (3 warm-up, 13 golden batches of 8): a fault
# after 20 passes every local gate and shows after a few production requests.
FAULT_AFTER = 20
ERROR_RATE_MAX, ERROR_MIN_SAMPLE = 0.02, 100
# How often the bench reads the rollout from the store: a status of a thousand devices is a heavy read, and the
# figures come from the monitor's clock, not from these polls.
STATUS_POLL_S = 0.5


@dataclass
class Monitor:
    """Every message on ``orch/v1/#``, as the broker routes it."""

    bad_sha: str = ""
    started: float = field(default_factory=time.monotonic)
    count: int = 0
    per_second: dict[int, int] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_bad_report: float | None = None  # the first report counting an error of the bad version
    gate_held: float | None = None  # the first moment the reports make the error-rate gate fail
    first_revert: float | None = None  # the first revert document the controller published
    reverted: dict[str, float] = field(default_factory=dict)  # device -> its first `reverted` event
    serving_bad: dict[str, float] = field(default_factory=dict)  # device -> its first report serving the bad one

    async def __call__(self, message: Message) -> None:
        now = time.monotonic()
        self.count += 1
        second = int(now - self.started)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        parsed = topics.parse(message.topic)
        if parsed is None:
            return
        device, kind = parsed
        if kind is topics.Kind.REPORT:
            with contextlib.suppress(ValueError):
                self._report(device, json.loads(message.payload), now)
        elif kind is topics.Kind.EVENTS and self.bad_sha:
            with contextlib.suppress(ValueError):
                event = json.loads(message.payload)
                if event.get("kind") == "reverted" and event.get("rollout") == "bad":
                    self.reverted.setdefault(device, now)
        elif kind is topics.Kind.DESIRED and self.bad_sha and self.first_revert is None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if json.loads(message.payload)["doc"]["intent"] == "revert":
                    self.first_revert = now

    def _report(self, device: str, report: dict[str, Any], now: float) -> None:
        self.reports[device] = report
        if not self.bad_sha:
            return
        entry = report.get("models", {}).get(MODEL, {})
        if entry.get("served_sha256") == self.bad_sha:
            self.serving_bad.setdefault(device, now)
        bad = [v for v in entry.get("versions", {}).values() if v.get("sha256") == self.bad_sha]
        if self.first_bad_report is None and any(v.get("errors", 0) > 0 for v in bad):
            self.first_bad_report = now
        if self.gate_held is None and bad:
            requests, errors = self._bad_totals()
            if requests >= ERROR_MIN_SAMPLE and errors / requests > ERROR_RATE_MAX:
                self.gate_held = now

    def _bad_totals(self) -> tuple[int, int]:
        requests = errors = 0
        for report in list(self.reports.values()):
            for v in report.get("models", {}).get(MODEL, {}).get("versions", {}).values():
                if v.get("sha256") == self.bad_sha:
                    requests += int(v.get("requests", 0))
                    errors += int(v.get("errors", 0))
        return requests, errors

    def served(self, device: str) -> int | None:
        return self.reports.get(device, {}).get("models", {}).get(MODEL, {}).get("served")

    def rate(self, since: float, until: float) -> tuple[float, int]:
        """(mean, peak) messages per second over whole seconds in [since, until)."""
        seconds = range(int(since - self.started), max(int(since - self.started) + 1, int(until - self.started)))
        counts = [self.per_second.get(s, 0) for s in seconds]
        return sum(counts) / len(counts), max(counts)


class MonitorThread:
    """The monitor's link in a thread and event loop of its own: in the simulated devices' loop it reads one
    packet per turn of a loop that has a thousand other links to serve, and falls behind the fleet."""

    def __init__(self, monitor: Monitor, link: Link) -> None:
        self.monitor, self.link = monitor, link
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def body() -> None:
            self.stopping = asyncio.Event()
            task = asyncio.create_task(self.link.run(self.monitor, self.stopping))
            try:
                await self.link.wait_connected(10)
            finally:
                self.ready.set()
            await task

        try:
            self.loop.run_until_complete(body())
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc
            self.ready.set()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(15)
        if self.error is not None or not self.link.connected:
            raise SystemExit(f"the monitor could not connect: {self.error}")

    def check(self) -> None:
        """SystemExit with what stopped the monitor, if it stopped."""
        if not self.thread.is_alive():
            raise SystemExit(f"the monitor stopped: {self.error!r}")

    def stop(self) -> None:
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(15)


class Usage:
    """CPU and memory of the broker, the controller, the simulating processes and this one per phase."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids
        self.marks: dict[str, tuple[float, dict[str, float]]] = {}
        self.peak_rss: dict[str, int] = {}

    def _cpu(self) -> dict[str, float]:
        found = {}
        for name, pid in self.pids().items():
            with contextlib.suppress(OSError):
                cpu, rss = process_usage(pid)
                found[name] = cpu
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
        own = resource.getrusage(resource.RUSAGE_SELF)
        found["bench (monitor, clients)"] = own.ru_utime + own.ru_stime
        self.peak_rss["bench (monitor, clients)"] = own.ru_maxrss * 1024
        return found

    def mark(self, name: str) -> None:
        self.marks[name] = (time.monotonic(), self._cpu())

    def share(self, start: str, end: str) -> dict[str, float]:
        """% of one core each used between two marks."""
        (t0, a), (t1, b) = self.marks[start], self.marks[end]
        return {name: (b[name] - a.get(name, 0.0)) / (t1 - t0) * 100.0 for name in b if name in a}


def _plan(lab: FleetLab, rollout: str, package: Any, bake_s: float, gates: list[dict[str, Any]]) -> Path:
    return lab.plan({"rollout": rollout, "model": MODEL, "package": package.to_json(), "spread": ["hw", "site"],
                     "defaults": {"bake_s": bake_s, "max_unavailable": "100%"},
                     "deadlines": {"ack_s": 120, "install_s": 300, "verify_slack_s": 120, "revert_s": 120},
                     "waves": WAVES, "gates": gates})


def _start(lab: FleetLab, plan: Path) -> None:
    done = lab.cli("rollout", "start", str(plan))
    if done.returncode != 0:
        raise SystemExit(f"rollout start failed: {done.stderr.strip()}")


def _settled(status: RolloutStatus) -> bool:
    return status.rollout.phase.final and not status.states.get("reverting")


async def scenario(args: argparse.Namespace, lab: FleetLab, sims: ShardedFleet, real: list[RealDevice],
                   addresses: dict[str, BrokerAddress], good: Any, bad: Any) -> dict[str, Any]:
    monitor = Monitor()
    password = (lab.root / "keys" / "controller.mqtt").read_text().strip()
    watcher = MonitorThread(monitor, Link(lab.address(lab.broker_files.controller_user, password), "bench-monitor",
                                          [f"{topics.PREFIX}/#"]))
    usage = Usage(lambda: {"broker": lab.broker.process.pid, "controller": lab.process.pid,  # type: ignore[union-attr]
                           **sims.pids()})
    out: dict[str, Any] = {"devices": args.devices, "real": len(real), "processes": len(sims.specs),
                           "gate_interval_s": args.gate, "report_s": args.report}
    try:
        await asyncio.to_thread(watcher.start)
        usage.mark("idle-start")
        started = time.monotonic()
        await asyncio.to_thread(sims.start, addresses, 300)
        out["connect_s"] = time.monotonic() - started
        everyone = sims.ids() + [d.device for d in real]
        # Up to 1 % may miss their first report (a device a busy process starved): named, and left out.
        missing = await lab.reported(MODEL, 1, everyone, timeout_s=180, tolerate=len(everyone) // 100,
                                     check=watcher.check)
        if missing:
            print(f"going on without a first report from {missing}", file=sys.stderr)
            for device in real:
                if device.device in missing:  # a real one should never miss it: what its log says
                    tail = device.log.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {device.log} (last lines)\n" + "\n".join(tail), file=sys.stderr)
        out["unreported_at_start"] = missing
        usage.mark("idle-from")
        await asyncio.sleep(10)
        usage.mark("idle-to")
        out["idle_messages_per_s"] = monitor.rate(usage.marks["idle-from"][0], usage.marks["idle-to"][0])[0]
        out["idle_cpu_percent"] = usage.share("idle-from", "idle-to")

        for device in real:
            device.start_traffic()
        if not args.skip_good:
            out["good"] = await _good_release(args, lab, monitor, usage, real, good)
        out["bad"] = await _bad_release(args, lab, monitor, usage, sims, real, bad)
        out["peak_rss_mib"] = {k: v / 2**20 for k, v in usage.peak_rss.items()}
        out["messages"] = monitor.count
        out["sim_failures"] = await asyncio.to_thread(sims.failures)
        return out
    finally:
        with contextlib.suppress(FleetError):
            await asyncio.to_thread(sims.stop)
        out["cut_socket_errors"] = sims.cut_socket_errors
        watcher.stop()


async def _good_release(args: argparse.Namespace, lab: FleetLab, monitor: Monitor, usage: Usage,
                        real: list[RealDevice], good: Any) -> dict[str, Any]:
    """The good release to every device, wave by wave; every real device's client requests meanwhile."""
    usage.mark("good-start")
    _start(lab, _plan(lab, "good", good, args.bake, [{"name": "verified", "metric": "verified_ratio", "min": 0.95}]))
    waves: list[float] = []
    while True:
        status = lab.status("good")
        while status.rollout.wave > len(waves) or (status.rollout.phase.final and len(waves) < len(WAVES)):
            waves.append(time.monotonic())
        if _settled(status):
            break
        await asyncio.sleep(STATUS_POLL_S)
    usage.mark("good-end")
    t0 = usage.marks["good-start"][0]
    wall0, wall1 = time.time() - (time.monotonic() - t0), time.time()
    answers = [a for d in real if d.traffic for a in d.traffic.answers if wall0 <= a[0] <= wall1]
    return {"phase": status.rollout.phase.value, "states": status.states, "seconds": waves[-1] - t0,
            "wave_seconds": [b - a for a, b in zip([t0, *waves[:-1]], waves, strict=True)],
            "messages_per_s": monitor.rate(t0, waves[-1]), "cpu_percent": usage.share("good-start", "good-end"),
            "real_requests": len(answers), "real_failed": sum(a[1] is None for a in answers),
            "real_serving_v2": sum(d.served() == 2 for d in real)}


async def _bad_release(args: argparse.Namespace, lab: FleetLab, monitor: Monitor, usage: Usage, sims: ShardedFleet,
                       real: list[RealDevice], bad: Any) -> dict[str, Any]:
    """The release that errors in production: the halt, every updated device's revert, a tenth of the first
    wave away through the halt and back after it."""
    # Client traffic on its first wave's simulated devices (the real ones have theirs): only the first wave
    # takes it, and the simulating processes cannot also serve a thousand devices' requests.
    monitor.bad_sha = bad.sha256
    usage.mark("bad-start")
    _start(lab, _plan(lab, "bad", bad, 3600, [
        {"name": "verified", "metric": "verified_ratio", "min": 0.95},
        {"name": "errors", "metric": "error_rate", "max": ERROR_RATE_MAX, "min_sample": ERROR_MIN_SAMPLE}]))
    first = [a.device for a in lab.status("bad").rollout.assignments.values() if a.wave == 0]
    await asyncio.to_thread(sims.traffic, [d for d in first if d in sims], args.traffic_period)
    away: list[str] = []
    wave_one = None
    polled = 0.0
    while True:
        if time.monotonic() - polled >= STATUS_POLL_S:
            status, polled = lab.status("bad"), time.monotonic()
            if wave_one is None and status.rollout.assignments:
                wave_one = sum(a.wave == 0 for a in status.rollout.assignments.values())
            if status.rollout.phase.final:
                break
        serving = [d for d in list(monitor.serving_bad) if d in sims and d not in away]
        want = math.ceil(0.1 * (wave_one or 0))
        if len(away) < want and serving:
            fresh = serving[: want - len(away)]
            sims.take_offline(fresh)
            away.extend(fresh)
        await asyncio.sleep(0.05)
    halted = await lab.until("bad", lambda s: s.rollout.phase.final, 120, "the halt", STATUS_POLL_S)

    def online_updated() -> list[str]:  # those installing at the halt serve the bad version after it, too
        return [d for d in list(monitor.serving_bad) if d not in away]

    deadline = time.monotonic() + 120
    while [d for d in online_updated() if d not in monitor.reverted] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    usage.mark("bad-halted")
    back = time.monotonic()
    sims.bring_online(away)
    await lab.until("bad", _settled, 300, "the devices back reverting", STATUS_POLL_S)
    await asyncio.sleep(2 * args.report)  # their reports after the revert
    done = lab.status("bad")
    usage.mark("bad-end")
    await asyncio.to_thread(sims.traffic_stop)

    halt = monitor.first_revert or time.monotonic()
    last_good = 1 if args.skip_good else 2  # the real devices' own version numbers
    online = [monitor.reverted[d] - halt for d in online_updated() if d in monitor.reverted]
    returned = [monitor.reverted[d] - back for d in away if d in monitor.reverted]
    local = await asyncio.to_thread(sims.rollback_seconds, list(monitor.reverted))
    served_bad = [d for d in sims.ids() if (monitor.reports.get(d, {}).get("models", {}).get(MODEL, {})
                                            .get("served_sha256")) == bad.sha256]
    return {
        "phase": halted.rollout.phase.value, "reason": halted.rollout.reason, "wave_one": wave_one,
        "states": done.states, "updated": len(monitor.serving_bad), "offline": len(away),
        "first_bad_report_to_halt_s": None if monitor.first_bad_report is None else halt - monitor.first_bad_report,
        "gate_condition_to_halt_s": None if monitor.gate_held is None else halt - monitor.gate_held,
        "halt_to_reverted_s": _summary(online), "returned_to_reverted_s": _summary(returned),
        "unreverted_online": [d for d in online_updated() if d not in monitor.reverted],
        "local_rollback_ms": _summary(local),
        "left_on_bad_version": len(served_bad) + sum((d.served() or 0) > last_good for d in real),
        "left_on_bad_version_controller": done.left_on_version,
        "messages_per_s": monitor.rate(usage.marks["bad-start"][0], usage.marks["bad-end"][0]),
        "cpu_percent": usage.share("bad-start", "bad-end")}


def _summary(values: list[float]) -> dict[str, float | int] | None:
    if not values:
        return None
    return {"n": len(values), "p50": pct(values, 0.5), "p95": pct(values, 0.95), "max": max(values)}


def _ms(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "no data"
    return (f"p50 {summary['p50'] * 1000:6.0f} ms  p95 {summary['p95'] * 1000:6.0f} ms  "
            f"max {summary['max'] * 1000:6.0f} ms  (n={summary['n']})")


def report(out: dict[str, Any]) -> None:
    good, bad = out.get("good"), out["bad"]
    print(f"fleet: {out['devices']} simulated (in {out['processes']} processes) + {out['real']} real devices, "
          f"gate interval {out['gate_interval_s']:g} s, reports every {out['report_s']:g} s; "
          f"connected in {out['connect_s']:.1f} s")
    print(f"idle: {out['idle_messages_per_s']:.0f} msg/s; CPU % of a core: "
          + ", ".join(f"{k} {v:.0f}" for k, v in out["idle_cpu_percent"].items()))
    if good is not None:
        print(f"good release: {good['phase']} in {good['seconds']:.1f} s, waves "
              + " / ".join(f"{s:.1f}" for s in good["wave_seconds"]) + f" s; {good['states']}")
        print(f"  real devices: {good['real_failed']} failed of {good['real_requests']} client requests; "
              f"{good['real_serving_v2']}/{out['real']} serve v2")
        print(f"  messages/s mean {good['messages_per_s'][0]:.0f}, peak {good['messages_per_s'][1]}; CPU % of a core: "
              + ", ".join(f"{k} {v:.0f}" for k, v in good["cpu_percent"].items()))
    print(f"bad release: {bad['phase']} ({bad['reason']}); wave 1 {bad['wave_one']} devices, {bad['updated']} took it, "
          f"{bad['offline']} of them offline through the halt")
    gate = out["gate_interval_s"]
    for name, key in (("first bad report -> halt", "first_bad_report_to_halt_s"),
                      ("gate condition held -> halt", "gate_condition_to_halt_s")):
        value = bad[key]
        print(f"  {name}: " + ("no data" if value is None else f"{value * 1000:.0f} ms = {value / gate:.2f} gate "
                                                               f"intervals"))
    print(f"  halt -> reverted (online):     {_ms(bad['halt_to_reverted_s'])}")
    print(f"  back online -> reverted:       {_ms(bad['returned_to_reverted_s'])}")
    print(f"  the devices' own rollback:     {_ms(bad['local_rollback_ms'])}")
    if bad["halt_to_reverted_s"] and bad["local_rollback_ms"]:
        print(f"  ratio fleet revert p50 / local rollback p50: "
              f"{bad['halt_to_reverted_s']['p50'] / bad['local_rollback_ms']['p50']:.1f}x")
    print(f"  left on the bad version: {bad['left_on_bad_version']} (controller: "
          f"{bad['left_on_bad_version_controller']}); not reverted online: {len(bad['unreverted_online'])}")
    print(f"  messages/s mean {bad['messages_per_s'][0]:.0f}, peak {bad['messages_per_s'][1]}; CPU % of a core: "
          + ", ".join(f"{k} {v:.0f}" for k, v in bad["cpu_percent"].items()))
    print("peak memory MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in out["peak_rss_mib"].items()))
    if out["sim_failures"]:
        print(f"simulated agents that stopped: {len(out['sim_failures'])}: {list(out['sim_failures'].items())[:3]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    parser.add_argument("--real", type=int, default=3, help="real devices: embedded Tritons (default 3)")
    parser.add_argument("--report", type=float, default=10.0,
                        help="the devices' report period, s (default 10, as on a device)")
    parser.add_argument("--gate", type=float, default=1.0, help="the controller's gate interval, s (default 1)")
    parser.add_argument("--bake", type=float, default=3.0, help="the good release's bake per wave, s (default 3)")
    parser.add_argument("--traffic-period", type=float, default=0.5,
                        help="each first-wave device's client request period in the bad release, s (default 0.5)")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes the simulated devices are spread over (default 2)")
    parser.add_argument("--workers", type=int, default=4, help="each process's worker threads for the devices")
    parser.add_argument("--skip-good", action="store_true",
                        help="only the bad release (the devices start on v1): its figures without the good one's "
                             "minutes first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = memory_folder("orch-fleet-bench-")
    lab = FleetLab(root / "lab", gate_interval_s=args.gate)
    real: list[RealDevice] = []
    try:
        build = BuildKey(root / "build")
        good = lab.packages.publish(build.sign(write_sample_package(root / "good", Variant.BETTER)), "good.tar.gz")
        bad = lab.packages.publish(build.sign(write_faulty_package(root / "errors", "errors", FAULT_AFTER)),
                                   "errors.tar.gz")
        lab.start_controller()
        real_devices = {f"real-{i}": ({**standard_labels(i + 1), "hw": XAVIER}, XAVIER) for i in range(args.real)}
        sims, real, addresses = lab.sharded_devices(
            root / "devices", args.devices, args.processes, build.trusted, real_devices, report_s=args.report,
            resend_s=5.0, workers=args.workers, link_options={"keepalive_s": 30, "max_backoff_s": 2.0})
        print(f"built {args.devices} simulated devices in {len(sims.specs)} processes in {sims.build_s:.1f} s; "
              f"{args.real} real devices started", file=sys.stderr)
        out = asyncio.run(scenario(args, lab, sims, real, addresses, good, bad))
        report(out)
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=2, sort_keys=True))
        return 0
    finally:
        for device in real:
            device.stop()
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
