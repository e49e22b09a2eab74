"""A real Mosquitto for the fleet tests: started from our own config on a free loopback port, one per
test module (``broker``), or a fresh one a test may kill (``make_broker``).

A missing mosquitto skips these tests, or fails them where ``CI`` is set (scripts/system-deps
installs Debian's mosquitto package there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.fleet.broker import BrokerFiles, MosquittoProcess, find_mosquitto, free_port
from orchestrator.fleet.lab import PackageServer, memory_folder
from orchestrator.fleet.transport import BrokerAddress, Link, Message, TlsFiles

T = TypeVar("T")


def require_mosquitto() -> str:
    found = find_mosquitto()
    if found is None:
        message = "mosquitto is missing (scripts/system-deps installs Debian's mosquitto package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Broker:
    """A running Mosquitto, its folder, and the controller's address; ``device`` adds a user."""

    files: BrokerFiles
    process: MosquittoProcess
    controller: BrokerAddress

    def device(self, device_id: str) -> BrokerAddress:
        """A new device user (random password); the broker has reloaded its password file on return."""
        return self.devices([device_id])[device_id]

    def devices(self, device_ids: Iterable[str]) -> dict[str, BrokerAddress]:
        """Many device users, with one write of the password file and one reload."""
        passwords = self.files.add_users(device_ids)
        self.process.reload()
        return {device: self.address(device, password) for device, password in passwords.items()}

    def address(self, user: str, password: str | None) -> BrokerAddress:
        return BrokerAddress(self.files.host, self.files.port, user, password)


def start_broker(folder: Path, tls: TlsFiles | None = None) -> Broker:
    binary = require_mosquitto()
    files = BrokerFiles(folder, port=free_port(), tls=tls)
    controller = files.add_controller()
    process = MosquittoProcess(files, binary).start()
    return Broker(files, process, BrokerAddress(files.host, files.port, files.controller_user, controller))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for a test module: tests share it, so each uses device ids of its own."""
    started = start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield started
    finally:
        started.process.stop()


@pytest.fixture
def make_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """Fresh brokers for one test (to kill, restart, or configure with TLS); all stopped after it."""
    started: list[Broker] = []

    def make(tls: TlsFiles | None = None) -> Broker:
        started.append(start_broker(tmp_path_factory.mktemp("mosquitto"), tls))
        return started[-1]

    try:
        yield make
    finally:
        for each in started:
            each.process.kill()


@pytest.fixture
def ram() -> Iterator[Path]:
    """A folder in memory where the machine has one: simulated devices' disks (see ``memory_folder``)."""
    folder = memory_folder("orch-sim-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageServer]:
    """A package server (HTTP on loopback) for a test module's releases."""
    server = PackageServer(tmp_path_factory.mktemp("site"))
    try:
        yield server
    finally:
        server.close()


def run(coroutine: Coroutine[Any, Any, T], timeout_s: float = 15.0) -> T:
    """An async test body, bounded: a hang fails the test instead of the suite."""
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout_s)

    return asyncio.run(bounded())


class Inbox:
    """A Link handler that keeps what arrives; ``wait_for`` polls a condition on it with a deadline."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._arrived.set()

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(self, condition: Callable[[Inbox], bool], timeout_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition(self):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"condition not met within {timeout_s:g}s; received: "
                                     f"{[(m.topic, m.payload) for m in self.messages]}")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)


@contextlib.asynccontextmanager
async def running(*links: tuple[Link, Callable[[Message], Awaitable[None]]],
                  timeout_s: float = 5.0) -> AsyncIterator[asyncio.Event]:
    """Runs each (link, handler) until the block ends; the block starts once all are connected. An error
    a link's run ended with is raised at the end of the block."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(link.run(handler, stop)) for link, handler in links]
    try:
        await asyncio.gather(*(link.wait_connected(timeout_s) for link, _ in links))
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks)
