"""Simulated devices spread over several processes: one ``SimulatedFleet`` per child, driven over a pipe.

One process of a thousand agents runs at a whole core through a wave (the loop, the agents' ticks, the
jobs), so the fleet's own reverts queue behind the simulation, not behind the controller. A ``ShardedFleet``
gives each of ``processes`` children its own fleet of devices ``<prefix><k>-00000``... (labels from the
device's index in its shard: ``standard_labels``), built there, enrolled by the parent, then connected
with the passwords it sends. The parent asks for what a bench or a test needs: devices offline and back,
client traffic on some, each device's own rollbacks from its journal, the agents that stopped.

The children are spawned (not forked: the parent has threads) and end when the parent does: a closed pipe
is a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import multiprocessing.connection
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.journal import Action, Result
from orchestrator.delivery.signing import load_trusted_keys
from orchestrator.errors import FleetError
from orchestrator.fleet.simulate import JOURNAL_S, SimulatedFleet, Traffic
from orchestrator.fleet.transport import BrokerAddress

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 600.0  # a build or a start of thousands of devices; anything longer is a hung child


@dataclass(frozen=True)
class ShardSpec:
    """What one child builds: ``count`` devices under ``root``, named ``<prefix>-00000``..."""

    root: Path
    count: int
    prefix: str
    controller_keys: Path  # a folder of *.pub
    package_keys: tuple[Path, ...]
    report_s: float = 10.0
    resend_s: float = 5.0
    journal_s: float = JOURNAL_S
    workers: int = 4
    link_options: Mapping[str, object] = field(default_factory=dict)


def quiet_cut_sockets() -> dict[str, int]:
    """aiomqtt reports a socket ``take_offline`` cut under it (EBADF, or EPERM once the descriptor's number is
    reused; a message iterator left unread) through the loop's exception handler: counted, not printed;
    anything else still goes to the default handler."""
    loop = asyncio.get_running_loop()
    seen = {"count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if (isinstance(error, OSError) and error.errno in (errno.EBADF, errno.EPERM)) \
                or type(error).__name__ == "MqttError":
            seen["count"] += 1
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return seen


def rollback_seconds(fleet: SimulatedFleet, ids: Iterable[str]) -> list[float]:
    """Each device's own successful rollbacks, as its journal timed them (what the switch takes on it)."""
    found = []
    for ident in ids:
        if ident not in fleet.devices:
            continue
        for record in fleet.journal(ident).records:
            if record.action is Action.ROLLBACK and record.result is Result.SUCCEEDED and record.duration_ms:
                found.append(record.duration_ms / 1000.0)
    return found


# --- the child ------------------------------------------------------------------------------------
class _Shard:
    def __init__(self, spec: ShardSpec) -> None:
        self.fleet = SimulatedFleet(spec.root, spec.count, controller_keys=load_trusted_keys(spec.controller_keys),
                                    package_keys=spec.package_keys, report_s=spec.report_s, resend_s=spec.resend_s,
                                    journal_s=spec.journal_s, workers=spec.workers,
                                    link_options=dict(spec.link_options), prefix=spec.prefix)
        self.traffic_stop = asyncio.Event()
        self.traffic: list[asyncio.Task[None]] = []
        self.cut: dict[str, int] = {"count": 0}

    async def handle(self, command: str, args: tuple[Any, ...]) -> Any:
        fleet = self.fleet
        if command == "build":
            await asyncio.to_thread(fleet.build)
            return fleet.build_s, fleet.labels()
        if command == "start":
            host, port, passwords, timeout_s = args
            fleet.broker_for = lambda ident: BrokerAddress(host, port, ident, passwords[ident])
            self.cut = quiet_cut_sockets()
            await fleet.start(connect_timeout_s=timeout_s)
            return None
        if command == "offline":
            fleet.take_offline(args[0])
            return None
        if command == "online":
            fleet.bring_online(args[0])
            return None
        if command == "traffic":
            ids, period_s = args
            devices = [fleet[d] for d in ids if d in fleet.devices]
            self.traffic.append(asyncio.create_task(Traffic(devices, period_s).run(self.traffic_stop)))
            return None
        if command == "traffic_stop":
            self.traffic_stop.set()
            await asyncio.gather(*self.traffic)
            self.traffic.clear()
            self.traffic_stop = asyncio.Event()
            return None
        if command == "rollbacks":
            return rollback_seconds(fleet, args[0])
        if command == "served":
            return fleet.served_versions()
        if command == "failures":
            return {k: str(v) for k, v in fleet.failures.items()}
        if command == "stop":
            await self.handle("traffic_stop", ())
            await fleet.stop()
            return self.cut["count"]
        raise ValueError(f"unknown command {command!r}")


async def _serve(conn: multiprocessing.connection.Connection, spec: ShardSpec) -> None:
    shard = _Shard(spec)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("stop", ()))

    loop.add_reader(conn.fileno(), readable)
    while True:
        command, args = await inbox.get()
        try:
            reply: tuple[str, Any] = ("ok", await shard.handle(command, args))
        except Exception as exc:  # told to the parent, which decides
            log.exception("%s: %s failed", spec.prefix, command)
            reply = ("error", f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            conn.send(reply)
        if command == "stop":
            return


def _child(conn: multiprocessing.connection.Connection, spec: ShardSpec) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {spec.prefix} %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(conn, spec))


# --- the parent -----------------------------------------------------------------------------------
class _Child:
    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_child, args=(theirs, spec), name=f"fleet-{spec.prefix}",
                                       daemon=True)
        self.process.start()
        theirs.close()
        self.lock = threading.Lock()

    def send(self, command: str, *args: Any) -> None:
        try:
            self.conn.send((command, args))
        except OSError:
            raise FleetError(f"simulated devices {self.spec.prefix}: the process exited "
                             f"({self.process.exitcode}) before {command}") from None

    def reply(self, command: str) -> Any:
        if not self.conn.poll(REPLY_TIMEOUT_S):
            raise FleetError(f"simulated devices {self.spec.prefix}: no answer to {command} in {REPLY_TIMEOUT_S:g} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise FleetError(f"simulated devices {self.spec.prefix}: the process exited "
                             f"({self.process.exitcode}) during {command}") from None
        if status != "ok":
            raise FleetError(f"simulated devices {self.spec.prefix}: {command} failed: {value}")
        return value


class ShardedFleet:
    """``count`` simulated devices over ``processes`` children (the last ones take the remainder)."""

    def __init__(self, root: Path, count: int, processes: int, controller_keys: Path, package_keys: Path, *,
                 prefix: str = "sim", **options: Any) -> None:
        processes = max(1, min(processes, count or 1))
        sizes = [count // processes + (1 if k >= processes - count % processes else 0) for k in range(processes)]
        self.specs = [ShardSpec(root / f"{prefix}{k}", size, f"{prefix}{k}", controller_keys,
                                tuple(sorted(package_keys.glob("*.pub"))), **options)
                      for k, size in enumerate(sizes) if size]
        self.children: list[_Child] = []
        self.labels_of: dict[str, dict[str, str]] = {}
        self.owner: dict[str, _Child] = {}
        self.build_s: float | None = None
        self.cut_socket_errors = 0

    def _all(self, command: str, *args: Any, children: Sequence[_Child] | None = None) -> list[Any]:
        """``command`` to every child at once, then every answer: one child's failure (the first raised, once
        all were read) leaves no answer of another's behind in its pipe."""
        chosen = self.children if children is None else children
        return self._ask([(child, (command, *args)) for child in chosen])

    def _each(self, command: str, ids: Iterable[str], *args: Any) -> list[Any]:
        """``command`` to every child owning some of ``ids``, with its own."""
        mine: dict[_Child, list[str]] = {}
        for ident in ids:
            mine.setdefault(self.owner[ident], []).append(ident)
        return self._ask([(child, (command, owned, *args)) for child, owned in mine.items()])

    @staticmethod
    def _ask(asks: Sequence[tuple[_Child, tuple[Any, ...]]]) -> list[Any]:
        for child, _ in asks:
            child.lock.acquire()
        try:
            sent, failed = [], None
            for child, (command, *args) in asks:
                try:
                    child.send(command, *args)
                    sent.append((child, command))
                except FleetError as exc:
                    failed = failed or exc
            answers = []
            for child, command in sent:
                try:
                    answers.append(child.reply(command))
                except FleetError as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
            return answers
        finally:
            for child, _ in asks:
                child.lock.release()

    def build(self) -> ShardedFleet:
        """Starts the children and builds their devices (in parallel); their labels are then known."""
        self.children = [_Child(spec) for spec in self.specs]
        built = self._all("build")
        self.build_s = max(seconds for seconds, _ in built)
        for child, (_, labels) in zip(self.children, built, strict=True):
            self.labels_of.update(labels)
            self.owner.update(dict.fromkeys(labels, child))
        return self

    def labels(self) -> dict[str, dict[str, str]]:
        return dict(self.labels_of)

    def ids(self) -> list[str]:
        return list(self.labels_of)

    def __contains__(self, ident: object) -> bool:
        return ident in self.owner

    def pids(self) -> dict[str, int]:
        return {f"devices {child.spec.prefix}": child.process.pid for child in self.children
                if child.process.pid is not None}

    def start(self, addresses: Mapping[str, BrokerAddress], connect_timeout_s: float) -> None:
        """Every device connected (FleetError naming the shard that could not, after ``connect_timeout_s``)."""
        first = next(iter(addresses.values()))
        self._ask([(child, ("start", first.host, first.port,
                            {d: addresses[d].password for d in self.labels_of if self.owner[d] is child},
                            connect_timeout_s)) for child in self.children])

    def take_offline(self, ids: Iterable[str]) -> None:
        self._each("offline", ids)

    def bring_online(self, ids: Iterable[str]) -> None:
        self._each("online", ids)

    def traffic(self, ids: Iterable[str], period_s: float) -> None:
        """One client request per ``period_s`` on each of ``ids`` (through its twin), until ``traffic_stop``."""
        self._each("traffic", ids, period_s)

    def traffic_stop(self) -> None:
        self._all("traffic_stop")

    def rollback_seconds(self, ids: Iterable[str]) -> list[float]:
        return [s for found in self._each("rollbacks", [d for d in ids if d in self.owner]) for s in found]

    def served_versions(self) -> dict[str, int | None]:
        return {d: v for found in self._all("served") for d, v in found.items()}

    def failures(self) -> dict[str, str]:
        return {d: why for found in self._all("failures") for d, why in found.items()}

    def stop(self) -> None:
        """Every device disconnected, every child exited (killed when it does not, after a grace)."""
        alive = [c for c in self.children if c.process.is_alive()]
        try:
            self.cut_socket_errors += sum(self._all("stop", children=alive))
        finally:
            for child in self.children:
                child.process.join(30)
                if child.process.is_alive():
                    child.process.kill()
                    child.process.join()
                child.conn.close()
            self.children = []
