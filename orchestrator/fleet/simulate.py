"""Many simulated devices in one process: the real fleet agent and Link on the in-memory Triton twin.

Each simulated device holds what a real one does, under ``<root>/devices/<id>/``::

    model_repository/classifier/   config.pbtxt (its own copy), v1 hard-linked to the fleet's image
    orchestrator_state/            trusted_keys/ (the package keys), classifier/ (policy.yaml; golden/ linked),
                                   fleet/ (the agent's state, journal and downloads)

a ``TritonTwin`` over that repository running the sample's packages (``SampleBackend``, the device's
``hw`` label as its hardware: a nano-only fault is bad there only), the ``Orchestrator`` the agent runs
the use cases with (actor ``fleet``), the real ``Agent`` (``agent.py``, reports read from the twin) and,
once started, its ``Link`` to the broker. With ``watch_s`` each device also has the real watcher
(``ModelWatcher``, actor ``watch``) ticked every ``watch_s`` seconds, so versions that turn bad after the
promote checks are rolled back on the device, as ``orchestrate watch --fleet`` does on a real one.

Every device runs in the one asyncio loop. The agents' handlers and ticks and the watchers' ticks run
in one bounded thread pool (``workers``), their jobs (download, import, promote, rollback: blocking file
work) in another of the same size, so at most that many of each run at once whatever the fleet's size,
and a device's finished bake is reported while a wave's installs queue. Devices connect at
``connect_rate_per_s`` (a ramp, as a real fleet coming up after an outage would be spread).

Labels come from a function of the device's index (``standard_labels``: three sites, three camera roles,
``hw=jetson-nano`` on every 33rd device, about 3 %). Optional client traffic (``traffic_period_s``) sends
each device one inference per period through its twin, spread evenly over the period, from one task and
one thread, so requests move (``SimulatedDevice.counters`` holds what the clients saw).

``take_offline`` cuts devices' connections without an MQTT DISCONNECT (the broker fires their last
will: ``offline``) and keeps them off; ``bring_online`` connects them again.

    python -m orchestrator.fleet.simulate --count 1000 --broker 127.0.0.1:1883 --credentials creds.json \\
        --controller-keys keys/ --package-keys build-keys/ --root /tmp/fleet

``--credentials``: a JSON object, device id -> MQTT password (``BrokerFiles.add_users`` returns one); the
devices are ``sim-00000``, ``sim-00001``, ... (``device_id``). Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.core.journal import WATCH_ACTOR, History
from orchestrator.delivery.signing import load_trusted_keys
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.errors import AuthRefused, OrchestratorError
from orchestrator.fleet.agent import FLEET_ACTOR, Agent, AgentOptions
from orchestrator.fleet.agent_runner import device_link, run_agent
from orchestrator.fleet.transport import BrokerAddress, Link
from orchestrator.sample import INPUT, MODEL, OUTPUT, golden_set
from orchestrator.sample.device_image import REPOSITORY, STATE, DeviceImage, install_image, write_device_image
from orchestrator.sample.twin_behaviour import SHARED_SESSIONS, SampleBackend, Sessions
from orchestrator.settings import Settings
from orchestrator.store.atomic import write_atomic
from orchestrator.store.repository import ModelStore
from orchestrator.triton.protocol import TritonState
from orchestrator.triton.twin import TritonTwin
from orchestrator.usecases.orchestrator import Orchestrator

log = logging.getLogger(__name__)

LabelsFor = Callable[[int], Mapping[str, str]]
BrokerFor = Callable[[str], BrokerAddress]


class Watcher(Protocol):
    """What the fleet needs of a device's watcher (``daemons.watcher.ModelWatcher``): one check per call."""

    def tick(self) -> object: ...


# A device's watcher from an orchestrator with the actor "watch", the model's store and the device's twin.
# The daemons are beside the fleet, not below it: the caller (a test, the bench, the CLI) brings the
# watcher, e.g. ModelWatcher(ctx, store, policy, WatchMetrics(CollectorRegistry()), NOWHERE, triton=twin,
# scrape=lambda url, timeout_s: None).
WatcherFactory = Callable[[Orchestrator, ModelStore, TritonTwin], Watcher]
NANO, XAVIER = "jetson-nano", "jetson-xavier-nx"
SITES = ("plant-a", "plant-b", "plant-c")
ROLES = ("entrance", "line", "dock")
NANO_EVERY = 33  # about 3 % of a fleet
DEFAULT_WORKERS = 4
IMAGE_DIR, DEVICES_DIR = "image", "devices"
# Lighter than a device's own (report 10 s, journal 1 s): 1,000 agents at those take a whole core when idle
# (measured: 98 % of one core, against 31 % at these), and the installs of a wave then crawl.
REPORT_S, JOURNAL_S = 30.0, 5.0
NOWHERE = "http://127.0.0.1:9/metrics"  # a twin has no /metrics: give a watcher this and a scrape answering None


def device_id(index: int, prefix: str = "sim") -> str:
    return f"{prefix}-{index:05d}"


def standard_labels(index: int) -> dict[str, str]:
    """Three sites and three camera roles in turn; every 33rd device (index 0, 33, ...) a Jetson Nano."""
    return {"site": SITES[index % len(SITES)], "role": ROLES[(index // len(SITES)) % len(ROLES)],
            "hw": NANO if index % NANO_EVERY == 0 else XAVIER}


@dataclass
class Counters:
    """What the device's clients saw: requests sent to its twin, those answered with an error, those answered
    with NaN or infinite outputs, and the version that answered last."""

    requests: int = 0
    errors: int = 0
    unusable: int = 0
    last_version: int | None = None


@dataclass
class SimulatedDevice:
    index: int
    id: str
    labels: dict[str, str]
    folder: Path
    backend: SampleBackend
    twin: TritonTwin
    orchestrator: Orchestrator  # the agent's (actor "fleet")
    agent: Agent
    watcher: Watcher | None = None
    counters: Counters = field(default_factory=Counters)
    link: Link | None = None  # while started
    online: bool = False  # meant to be connected (take_offline clears it)

    @property
    def repository(self) -> Path:
        return self.folder / REPOSITORY

    @property
    def state(self) -> Path:
        return self.folder / STATE

    @property
    def hardware(self) -> str:
        return self.labels.get("hw", "")

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    def store(self) -> ModelStore:
        return ModelStore(self.repository / MODEL, self.state / MODEL)

    def served_version(self) -> int | None:
        """The version that answers a request naming none: the twin's highest READY one (None: nothing)."""
        ready = [v for v, e in self.twin.states(MODEL).items() if e.state is TritonState.READY]
        return max(ready) if ready else None

    def journal(self) -> History:
        """The classifier's journal on this device (imports, promotes, rollbacks, the agent's fleet records)."""
        return self.store().journal.read()


@dataclass(frozen=True)
class DeviceSetup:
    """What every device of a fleet shares: its image, keys, the agent's timings, how to watch it."""

    image: DeviceImage
    package_keys: tuple[Path, ...] = ()
    controller_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    report_s: float = 10.0
    resend_s: float = 5.0
    journal_s: float = 1.0
    watcher_for: WatcherFactory | None = None  # None: no watcher
    sessions: Sessions = SHARED_SESSIONS
    link_files: bool = True


def build_device(setup: DeviceSetup, folder: Path, index: int, labels: Mapping[str, str],
                 ident: str | None = None) -> SimulatedDevice:
    """One device under ``folder`` (which must not exist): its files, its twin serving v1, its orchestrator,
    its agent and (``setup.watcher_for``) its watcher. Nothing connects."""
    repository, state = folder / REPOSITORY, folder / STATE
    install_image(setup.image, repository, state, link=setup.link_files)
    trusted = state / "trusted_keys"
    trusted.mkdir()
    for key in setup.package_keys:
        shutil.copyfile(key, trusted / key.name)
    ident, hardware = ident or device_id(index), labels.get("hw", "")
    backend = SampleBackend(hardware=hardware, sessions=setup.sessions)
    twin = TritonTwin(ident, repository, load_models=(MODEL,), behaviour_for=backend)
    settings = Settings(repository, state_dir=state, triton_url=twin.url, actor=FLEET_ACTOR, lock_timeout_s=5.0)
    trust = TrustPolicy(trusted)
    orchestrator = Orchestrator(settings, triton=twin, trust=trust)
    options = AgentOptions(ident, labels=dict(labels), facts={"hardware": hardware, "triton": "twin"},
                           models=(MODEL,), report_s=setup.report_s, resend_s=setup.resend_s,
                           journal_s=setup.journal_s)
    agent = Agent(orchestrator, options, setup.controller_keys, stats=twin)
    device = SimulatedDevice(index, ident, dict(labels), folder, backend, twin, orchestrator, agent)
    if setup.watcher_for is not None:  # as the watch daemon builds its own: actor "watch", a short lock wait
        watching = Orchestrator(Settings(repository, state_dir=state, triton_url=twin.url, actor=WATCH_ACTOR,
                                         lock_timeout_s=0.5), triton=twin, trust=trust)
        device.watcher = setup.watcher_for(watching, device.store(), twin)
    return device


class Traffic:
    """Light client traffic: each device one inference per ``period_s``, device i at offset i/count of the
    period, all of them from one task, in batches run on a thread of its own (a slow version sleeps there,
    not in the loop)."""

    def __init__(self, devices: Sequence[SimulatedDevice], period_s: float, tick_s: float = 0.05) -> None:
        self.devices, self.period_s, self.tick_s = list(devices), period_s, tick_s
        self.image = golden_set()[0][:1]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sim-traffic")

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        count = len(self.devices)
        if not count:
            return
        slot = self.period_s / count  # device i's k-th request is due at start + (k * count + i) * slot
        started, issued = loop.time(), 0
        try:
            while not stop.is_set():
                due = int((loop.time() - started) / slot) + 1
                issued = max(issued, due - count)  # fallen behind by a whole period: skip it, no burst
                if due > issued:
                    batch = [self.devices[j % count] for j in range(issued, due)]
                    await loop.run_in_executor(self._executor, self._serve, batch)
                    issued = due
                await _sleep_until(stop, max(self.tick_s, started + issued * slot - loop.time()))
        finally:
            self._executor.shutdown(wait=True)

    def _serve(self, devices: Iterable[SimulatedDevice]) -> None:
        for device in devices:
            counters = device.counters
            counters.requests += 1
            try:
                result = device.twin.infer(MODEL, {INPUT: self.image}, [OUTPUT])
            except OrchestratorError:  # TritonError / TritonUnreachable: the client's failed request
                counters.errors += 1
                continue
            counters.last_version = result.version
            if not np.isfinite(result.outputs[OUTPUT]).all():
                counters.unusable += 1


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def cut_connection(link: Link) -> None:
    """Close the link's socket under it, sending no DISCONNECT: to the broker the device vanished, so its
    last will is published. The only code here that reaches into aiomqtt/paho (``Link`` offers no such call)."""
    client = getattr(link, "_client", None)  # transport._Client (aiomqtt), set while connected
    paho = getattr(client, "_client", None)
    sock = paho.socket() if paho is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class SimulatedFleet:
    """``count`` simulated devices under ``root``. ``build`` makes them (no broker needed); ``start`` connects
    each device's agent (``broker_for(device_id)``: its broker address and credentials) and starts the client
    traffic and the watchers; ``stop`` ends them, each device publishing its will (``offline``) as it goes.

    ``controller_keys``: key id -> public key the devices trust for the controller's documents
    (``load_trusted_keys(folder)``); ``package_keys``: the ``*.pub`` files they trust for packages.
    ``workers`` bounds the blocking calls running at once; ``watcher_for`` gives every device a watcher,
    ticked every ``watch_s`` seconds; ``link_files=False`` copies the image instead of hard-linking it;
    ``link_options`` go to each device's ``Link`` (keepalive_s, max_backoff_s...). Devices are named
    ``<prefix>-00000``, ``<prefix>-00001``...: fleets with different prefixes can share a broker.
    """

    def __init__(self, root: Path, count: int, labels_for: LabelsFor = standard_labels,
                 broker_for: BrokerFor | None = None, controller_keys: Mapping[str, Ed25519PublicKey] | None = None,
                 package_keys: Sequence[Path] = (), *, traffic_period_s: float | None = None,
                 workers: int = DEFAULT_WORKERS, connect_rate_per_s: float = 500.0, report_s: float = REPORT_S,
                 resend_s: float = 5.0, journal_s: float = JOURNAL_S, watcher_for: WatcherFactory | None = None,
                 watch_s: float = 1.0, link_files: bool = True, link_options: Mapping[str, object] | None = None,
                 sessions: Sessions = SHARED_SESSIONS, prefix: str = "sim") -> None:
        self.prefix = prefix
        self.root, self.count, self.labels_for, self.broker_for = root, count, labels_for, broker_for
        self.controller_keys = dict(controller_keys or {})
        self.package_keys = tuple(package_keys)
        self.traffic_period_s, self.workers, self.connect_rate_per_s = traffic_period_s, workers, connect_rate_per_s
        self.report_s, self.resend_s, self.journal_s = report_s, resend_s, journal_s
        self.watcher_for, self.watch_s = watcher_for, watch_s
        self.link_files, self.sessions = link_files, sessions
        self.link_options = dict(link_options or {})
        self.devices: dict[str, SimulatedDevice] = {}
        self.build_s: float | None = None  # how long the last build took
        self.failures: dict[str, BaseException] = {}  # device -> what its agent's run ended with
        self._executor: ThreadPoolExecutor | None = None  # messages, ticks and watchers
        self._jobs: ThreadPoolExecutor | None = None  # installs and reverts
        self._stop: asyncio.Event | None = None
        self._runs: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._background: list[asyncio.Task[None]] = []

    # --- building -------------------------------------------------------------------------
    def build(self) -> SimulatedFleet:
        """Every device's folders, twin, orchestrator and agent (those already built are kept). A device folder
        left by an earlier run is removed first: each build starts its devices afresh."""
        started = time.monotonic()
        setup = DeviceSetup(write_device_image(self.root / IMAGE_DIR), self.package_keys, self.controller_keys,
                            self.report_s, self.resend_s, self.journal_s, self.watcher_for, self.sessions,
                            self.link_files)
        for index in range(self.count):
            ident = device_id(index, self.prefix)
            if ident in self.devices:
                continue
            folder = self.root / DEVICES_DIR / ident
            shutil.rmtree(folder, ignore_errors=True)
            self.devices[ident] = build_device(setup, folder, index, self.labels_for(index), ident)
        self.build_s = time.monotonic() - started
        return self

    def __getitem__(self, ident: str) -> SimulatedDevice:
        return self.devices[ident]

    def __iter__(self) -> Iterator[SimulatedDevice]:
        return iter(self.devices.values())

    def ids(self, where: Callable[[SimulatedDevice], bool] = lambda device: True) -> list[str]:
        return [ident for ident, device in self.devices.items() if where(device)]

    def with_label(self, key: str, value: str) -> list[str]:
        return self.ids(lambda device: device.labels.get(key) == value)

    def labels(self) -> dict[str, dict[str, str]]:
        """Device id -> labels: what the controller enrols."""
        return {ident: dict(device.labels) for ident, device in self.devices.items()}

    def served_versions(self) -> dict[str, int | None]:
        return {ident: device.served_version() for ident, device in self.devices.items()}

    def journal(self, ident: str) -> History:
        return self.devices[ident].journal()

    # --- running --------------------------------------------------------------------------
    async def start(self, connect_timeout_s: float | None = None) -> None:
        """Builds what is not built yet (in a thread), connects every device at ``connect_rate_per_s``, starts
        the traffic and the watchers. With ``connect_timeout_s``, returns once every device is connected
        (``LinkDown`` naming the first that is not, after that long)."""
        if self.broker_for is None:
            raise ValueError("a fleet with no broker_for cannot start: build() it and drive the devices directly")
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sim-device")
        self._jobs = ThreadPoolExecutor(self.workers, thread_name_prefix="sim-job")
        self._stop = asyncio.Event()
        if len(self.devices) < self.count:
            await loop.run_in_executor(self._executor, self.build)
        devices = list(self.devices.values())
        if self.traffic_period_s:
            self._background.append(asyncio.create_task(Traffic(devices, self.traffic_period_s).run(self._stop)))
        if self.watcher_for is not None:
            self._background.append(asyncio.create_task(self._watch(devices, self.watch_s, self._stop)))
        gap = 1.0 / self.connect_rate_per_s if self.connect_rate_per_s > 0 else 0.0
        for device in devices:
            self._connect(device)
            if gap:
                await asyncio.sleep(gap)
        if connect_timeout_s is not None:
            await self.wait_connected(self.ids(), connect_timeout_s)

    async def wait_connected(self, ids: Iterable[str], timeout_s: float) -> None:
        links = [self.devices[ident].link for ident in ids]
        await asyncio.gather(*(link.wait_connected(timeout_s) for link in links if link is not None))

    def _connect(self, device: SimulatedDevice) -> None:
        assert self.broker_for is not None and self._stop is not None
        device.link = device_link(device.agent, self.broker_for(device.id), **self.link_options)
        device.online = True
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(device, device.link, stop), name=f"agent {device.id}")
        self._runs[device.id] = (task, stop)

    async def _run(self, device: SimulatedDevice, link: Link, stop: asyncio.Event) -> None:
        try:
            await run_agent(device.agent, link, stop, self._executor, self._jobs)
        except AuthRefused as exc:
            log.error("%s: %s", device.id, exc)
            self.failures[device.id] = exc
        except Exception as exc:  # a bug of the agent's: kept for the test or the operator, the rest go on
            log.exception("%s: the agent stopped", device.id)
            self.failures[device.id] = exc

    async def _watch(self, devices: Sequence[SimulatedDevice], every_s: float, stop: asyncio.Event) -> None:
        """Every device's watcher ticked once per ``every_s``, spread over it, in the shared pool."""
        watched = [d for d in devices if d.watcher is not None]
        if not watched:
            return
        loop = asyncio.get_running_loop()
        gap = every_s / len(watched)
        while not stop.is_set():
            for device in watched:
                started = loop.time()
                assert device.watcher is not None
                try:
                    await loop.run_in_executor(self._executor, device.watcher.tick)
                except Exception:  # one device's trouble is not the fleet's
                    log.exception("%s: watcher tick failed", device.id)
                await _sleep_until(stop, max(0.0, gap - (loop.time() - started)))
                if stop.is_set():
                    return

    def take_offline(self, ids: Iterable[str]) -> None:
        """The devices vanish from the broker (no DISCONNECT: their wills fire) and stay away until
        ``bring_online``. They keep serving, and their watchers keep watching."""
        for ident in ids:
            device = self.devices[ident]
            run = self._runs.pop(ident, None)
            device.online = False
            if device.link is not None:
                cut_connection(device.link)
            if run is not None:
                run[0].cancel()  # no reconnect; the link closes a socket already cut

    def bring_online(self, ids: Iterable[str]) -> None:
        """The devices connect again (their agents resend what the controller has not acknowledged)."""
        for ident in ids:
            device = self.devices[ident]
            if ident not in self._runs:
                self._connect(device)

    async def stop(self) -> None:
        """Every device disconnects (publishing ``offline``), traffic and watchers end, the pool drains."""
        if self._stop is None:
            return
        self._stop.set()
        runs = list(self._runs.values())
        self._runs.clear()
        for _, stop in runs:
            stop.set()
        await asyncio.gather(*(task for task, _ in runs), *self._background, return_exceptions=True)
        self._background.clear()
        for device in self.devices.values():
            device.online = False
        for pool in (self._executor, self._jobs):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._jobs = None
        self._stop = None

    async def __aenter__(self) -> SimulatedFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- the runnable entry ---------------------------------------------------------------------
def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give the broker as host:port")
    return host or "127.0.0.1", int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.fleet.simulate",
                                     description="Run simulated fleet devices (agents on Triton twins) against a "
                                                 "broker until SIGINT or SIGTERM.")
    parser.add_argument("--count", type=int, required=True, help="devices sim-00000 ... (count - 1)")
    parser.add_argument("--broker", type=_host_port, required=True, help="host:port of the MQTT broker")
    parser.add_argument("--credentials", type=Path, required=True, help="JSON object: device id -> MQTT password")
    parser.add_argument("--controller-keys", type=Path, required=True,
                        help="folder of *.pub: the controller keys the devices trust")
    parser.add_argument("--package-keys", type=Path, help="folder of *.pub: the package keys the devices trust "
                                                          "(without it they file no package)")
    parser.add_argument("--root", type=Path, required=True, help="the devices' folders go here")
    parser.add_argument("--nano-every", type=int, default=NANO_EVERY, help="every Nth device is a jetson-nano "
                                                                           f"(default {NANO_EVERY}: ~3%%)")
    parser.add_argument("--traffic-period", type=float, default=None, help="one client request per device this "
                                                                           "often, seconds (default: none)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--report", type=float, default=10.0, help="each agent's report period, seconds")
    parser.add_argument("--status", type=Path, help="write the devices' served versions here (JSON) every second")
    return parser.parse_args(argv)


def _labels_every(nano_every: int) -> LabelsFor:
    def labels(index: int) -> dict[str, str]:
        return {**standard_labels(index), "hw": NANO if nano_every > 0 and index % nano_every == 0 else XAVIER}
    return labels


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.broker
    passwords = json.loads(args.credentials.read_text())
    fleet = SimulatedFleet(args.root, args.count, labels_for=_labels_every(args.nano_every),
                           broker_for=lambda ident: BrokerAddress(host, port, ident, passwords[ident]),
                           controller_keys=load_trusted_keys(args.controller_keys),
                           package_keys=sorted(args.package_keys.glob("*.pub")) if args.package_keys else (),
                           traffic_period_s=args.traffic_period, workers=args.workers, report_s=args.report)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    started = time.monotonic()
    await fleet.start()
    log.info("%d simulated devices started in %.1f s (built in %.1f s)", args.count, time.monotonic() - started,
             fleet.build_s or 0.0)
    while not stopping.is_set():
        if args.status is not None:
            text = json.dumps({"served": fleet.served_versions(), "connected": len(fleet.ids(lambda d: d.connected)),
                               "failures": {k: str(v) for k, v in fleet.failures.items()}}, sort_keys=True)
            write_atomic(args.status, text)
        await _sleep_until(stopping, 1.0)
    await fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except (OrchestratorError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
