"""The fleet agent on an MQTT link: a thin asyncio shell around the sans-I/O ``Agent``.

One ``run_agent`` per device, thousands of them on one event loop (the simulated fleet): the link's
messages are handled in arrival order, each handler and ``tick`` run in a worker thread (they write the
agent's state file and journals), and the blocking jobs (download, import, promote, rollback) run in a
worker thread too, one at a time per device, while acknowledgements, resends and reports go on. A
publish that finds the link down is simply not done: the event stays in the outbox and goes out again
on the next connect or resend. No timer per agent runs faster than the agent's own ``next_due``.

``serve`` is ``orchestrate watch --fleet``'s: the agent of this device in its own thread and event loop,
beside the watch daemon, until the daemon stops.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.errors import AuthRefused, FleetError, LinkDown
from orchestrator.fleet.agent import FLEET_ACTOR, Agent, AgentOptions, Outgoing
from orchestrator.fleet.transport import BrokerAddress, Link, Message
from orchestrator.settings import Settings
from orchestrator.triton.client import Triton
from orchestrator.usecases.orchestrator import Orchestrator

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SLEEP_S = 0.01  # a tick due at once still yields to the loop
MAX_SLEEP_S = 5.0  # and one far away is looked at again (a clock that jumps)
AUTH_RETRY_S = 30.0  # refused credentials: the watcher goes on, the link is tried again this much later
CRASH_RETRY_S = 5.0  # anything else that stopped the link (a bug, logged with its traceback)
STOP_POLL_S = 0.2


def device_link(agent: Agent, address: BrokerAddress, **options: object) -> Link:
    """The agent's link: its subscriptions, and the presence ``offline`` as its last will."""
    will = agent.will
    return Link(address, agent.device, agent.subscriptions, will=Message(will.topic, will.payload, will.retain),
                **options)  # type: ignore[arg-type]


class _Runner:
    def __init__(self, agent: Agent, link: Link, executor: Executor | None, jobs: Executor | None = None) -> None:
        self.agent, self.link, self.executor = agent, link, executor
        self.jobs = jobs if jobs is not None else executor
        self.control = asyncio.Lock()  # messages and ticks one at a time, in order
        self.work = asyncio.Event()  # a job may be queued
        self.due = asyncio.Event()  # something may be due before the agent's next_due said

    async def call(self, function: Callable[..., T], *args: object, executor: Executor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor or self.executor,
                                                                functools.partial(function, *args))

    async def publish(self, messages: list[Outgoing]) -> None:
        for message in messages:
            try:
                await self.link.publish(message.topic, message.payload, message.retain, message.qos)
            except LinkDown:
                return  # the rest waits in the outbox (events) or for the next report
            except FleetError as exc:  # the broker refused it (its ACL): said, not retried
                log.error("%s: %s", self.agent.device, exc)

    async def on_connect(self) -> None:
        async with self.control:
            messages = await self.call(self.agent.on_connect)
        await self.publish(messages)

    async def handle(self, message: Message) -> None:
        async with self.control:
            try:
                out = await self.call(self.agent.on_message, message.topic, message.payload)
            except Exception:  # a bug or a full disk: this message is lost, the agent goes on
                log.exception("%s: handling a message on %s failed", self.agent.device, message.topic)
                return
        self.work.set()
        self.due.set()
        await self.publish(out)

    async def worker(self) -> None:
        while True:
            job = self.agent.next_job()
            if job is None:
                await self.work.wait()
                self.work.clear()
                continue
            try:
                out = await self.call(self.agent.run_job, job, executor=self.jobs)
            except Exception:  # the document stays in progress: its next arrival or a restart resumes it
                log.exception("%s: %s job of %s failed", self.agent.device, job.kind, job.model)
                continue
            self.due.set()
            await self.publish(out)

    async def ticker(self) -> None:
        while True:
            delay = min(max(self.agent.next_due() - self.agent.clock(), MIN_SLEEP_S), MAX_SLEEP_S)
            try:
                await asyncio.wait_for(self.due.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.due.clear()
            async with self.control:
                try:
                    out = await self.call(self.agent.tick)
                except Exception:
                    log.exception("%s: tick failed", self.agent.device)
                    continue
            await self.publish(out)


async def run_agent(agent: Agent, link: Link, stop: asyncio.Event, executor: Executor | None = None,
                    jobs: Executor | None = None) -> None:
    """``agent`` on ``link`` until ``stop`` is set (then the link publishes its will and disconnects). Raises
    what ``link.run`` raises (``AuthRefused``). ``executor``: where the blocking calls run (the loop's default);
    ``jobs``: where installs and reverts run, when not there (many simulated devices sharing a few workers:
    a tick that reports a finished bake must not wait behind a hundred installs)."""
    runner = _Runner(agent, link, executor, jobs)
    link.on_connect = runner.on_connect
    tasks = [asyncio.create_task(runner.worker()), asyncio.create_task(runner.ticker())]
    try:
        await link.run(runner.handle, stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.call(agent.close)


def build_agent(settings: Settings, options: AgentOptions, controller_keys: Mapping[str, Ed25519PublicKey]) -> Agent:
    """The device's agent as ``orchestrate watch --fleet`` runs it: the use cases with the actor ``fleet``,
    reports read over a Triton connection of their own."""
    ctx = Orchestrator(replace(settings, actor=FLEET_ACTOR))
    stats = Triton(settings.triton_url, settings.admin_key, timeout_s=min(settings.timeout_s, 5.0))
    return Agent(ctx, options, controller_keys, stats=stats)


def serve(agent: Agent, address: BrokerAddress, stop: threading.Event) -> None:
    """The agent in this thread until ``stop`` is set; refused credentials are logged and tried again later
    (the watcher keeps every local guarantee without the link)."""
    asyncio.run(_serve(agent, address, stop))


async def _serve(agent: Agent, address: BrokerAddress, stop: threading.Event) -> None:
    stopping = asyncio.Event()

    async def bridge() -> None:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_S)
        stopping.set()

    watcher = asyncio.create_task(bridge())
    try:
        while not stopping.is_set():
            try:
                await run_agent(agent, device_link(agent, address), stopping)
                retry_s = 0.0
            except AuthRefused as exc:
                log.error("fleet agent: %s; trying again in %.0f s", exc, AUTH_RETRY_S)
                retry_s = AUTH_RETRY_S
            except Exception:  # a bug on a device nobody watches: the watcher goes on, and so must the link
                log.exception("fleet agent: the link stopped; starting it again in %.0f s", CRASH_RETRY_S)
                retry_s = CRASH_RETRY_S
            if retry_s:
                try:
                    await asyncio.wait_for(stopping.wait(), retry_s)
                except asyncio.TimeoutError:
                    pass
    finally:
        watcher.cancel()
