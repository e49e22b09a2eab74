"""``orchestrate fleet serve``: the controller on the broker, one asyncio loop.

Incoming messages are queued and stored in batches (one transaction for many events, then their
acknowledgements); every gate interval each active rollout takes one step and the documents it
wrote are published, and sooner (``next_step_at``) once reports or events came in while a rollout is
active, so that a gate's condition is judged within about half an interval of the data that makes it
hold. All store work runs on one worker thread, in order, so the loop keeps reading
the broker while SQLite syncs. On every (re)connect every retained document is published again:
a broker restarted without persistence holds nothing the controller cannot give back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from orchestrator.errors import FleetError
from orchestrator.fleet import topics
from orchestrator.fleet.controller import Controller, Outgoing
from orchestrator.fleet.transport import BrokerAddress, Link, LinkDown, Message

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH_S = 0.05
MAX_BATCH = 2000
CLIENT_ID = "orchestrator-controller"
EARLY_STEP = 0.5  # share of the gate interval after a step when fresh data for an active rollout brings the next
JUDGED = (topics.Kind.REPORT, topics.Kind.EVENTS)


def next_step_at(last_started: float, gate_interval_s: float, fresh_data: bool, rolling: bool) -> float:
    """When the next step runs: a gate interval after the last one, or ``EARLY_STEP`` of one when reports or
    events arrived since it and a rollout is active (a step at 2,000 devices costs ~0.1 s: not every batch)."""
    return last_started + gate_interval_s * (EARLY_STEP if fresh_data and rolling else 1.0)


def _judged(batch: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a batch holds what a step judges: a device's report or its events."""
    for topic, _ in batch:
        parsed = topics.parse(topic)
        if parsed is not None and parsed[1] in JUDGED:
            return True
    return False


class ControllerService:
    def __init__(self, controller: Controller, address: BrokerAddress, gate_interval_s: float = 1.0,
                 on_tick: Callable[[Controller, ControllerService], None] | None = None) -> None:
        self.controller = controller
        self.gate_interval_s = gate_interval_s
        self.on_tick = on_tick  # the metrics exporter's refresh: (controller, this service)
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.link = Link(address, CLIENT_ID, topics.CONTROLLER_FILTERS, on_connect=self._republish,
                         clean_start=False, keepalive_s=15)
        self.store_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fleet-store")
        self.messages = 0
        self.ticks = 0
        self.tick_s = 0.0  # how long the last step took (the metrics' step_seconds)
        self.background: set[asyncio.Future[None]] = set()
        self.fresh = asyncio.Event()  # reports or events stored since the last step began
        self.rolling = False  # a rollout was active after the last step

    async def _store(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.store_thread, fn, *args)

    async def _handle(self, message: Message) -> None:
        self.queue.put_nowait((message.topic, message.payload))

    async def _republish(self) -> None:
        documents = await self._store(self.controller.everything)
        log.info("connected: republishing %d retained documents", len(documents))
        # After on_connect returns the link reads messages again; publishing in the background keeps it reading.
        task = asyncio.ensure_future(self._publish(documents))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _publish(self, outgoing: Sequence[Outgoing]) -> None:
        if not outgoing:
            return
        results = await asyncio.gather(*(self.link.publish(o.topic, o.payload, retain=o.retain) for o in outgoing),
                                       return_exceptions=True)
        sent = [o for o, r in zip(outgoing, results, strict=True) if r is None]
        failed = [r for r in results if r is not None]
        for error in failed[:1]:
            if not isinstance(error, (LinkDown, FleetError)):
                raise error
            log.warning("%d of %d messages not published (%s); they go out after the reconnect", len(failed),
                        len(outgoing), error)
        if sent:
            await self._store(self.controller.published, sent)

    async def _ingest_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            batch = [first]
            deadline = time.monotonic() + BATCH_S
            while len(batch) < MAX_BATCH and time.monotonic() < deadline:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.005)
            self.messages += len(batch)
            acks = await self._store(self.controller.ingest, batch)
            if _judged(batch):
                self.fresh.set()
            await self._publish(acks)

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            self.fresh.clear()  # what arrives from here on is for the next step
            try:
                outgoing = await self._store(self.controller.tick)
                self.ticks += 1
                self.tick_s = time.monotonic() - started
                self.rolling = await self._store(self.controller.active)
                if self.on_tick is not None:
                    await self._store(self.on_tick, self.controller, self)
                if self.link.connected:
                    await self._publish(outgoing)
            except FleetError as exc:  # the store busy past its timeout: the next tick tries again
                log.warning("rollout step skipped: %s", exc)
            await self._until_next_step(started, stop)

    async def _until_next_step(self, started: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = next_step_at(started, self.gate_interval_s, self.fresh.is_set(), self.rolling) - time.monotonic()
            if wait <= 0:
                return
            waiters = {asyncio.ensure_future(stop.wait())}
            if self.rolling and not self.fresh.is_set():
                waiters.add(asyncio.ensure_future(self.fresh.wait()))  # fresh data may bring the step forward
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.ensure_future(self.link.run(self._handle, stop)),
                 asyncio.ensure_future(self._ingest_loop(stop)), asyncio.ensure_future(self._tick_loop(stop))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.store_thread.shutdown(wait=True)
