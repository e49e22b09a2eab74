"""One MQTT 5 session on asyncio (aiomqtt over paho-mqtt): a device's or the controller's link to the broker.

A ``Link`` connects, subscribes, hands every incoming message to one handler in arrival order (the
handler is awaited: a slow handler slows the link, never reorders it), and reconnects by itself with a
jittered, capped backoff; ``on_connect`` runs after every (re)connect, before the first message of
that session is handled, to republish presence and resend unacknowledged events. Thousands of links
share one event loop: no thread per link (aiomqtt registers each socket with the loop).

Errors, in our own types (``orchestrator.errors``): ``LinkDown`` when a publish finds no connection or
the connection drops before the broker acknowledged it (the caller resends on ``on_connect``);
``NotAuthorized`` when the broker answers a QoS 1 publish with PUBACK 0x87 (its ACL refuses the topic);
``PublishRefused`` for any other failing PUBACK reason code; ``AuthRefused`` from ``run`` once the broker
has refused the credentials (CONNACK 0x86 / 0x87) ``max_auth_refusals`` times in a row (each retried
with the backoff: a password file being reloaded is a brief refusal). ``last_error`` always says why the
link is not connected. aiomqtt's and paho's errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from orchestrator.errors import AuthRefused, FleetError, LinkDown, NotAuthorized, PublishRefused

__all__ = ["AuthRefused", "BrokerAddress", "Handler", "Link", "LinkDown", "Message", "NotAuthorized", "PublishRefused",
           "TlsFiles"]

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
# QoS 1 publishes on the wire at once (paho's default is 20); beyond it paho queues them in memory, without
# limit, and sends one as each PUBACK frees a slot. Measured on 2 cores against Mosquitto 2.0.11, 1,000
# concurrent publishes from one link: ~0.15 s at 20 or 100, ~0.24 s at 1,000; 10,000: ~2 s.
MAX_INFLIGHT = 100

Handler = Callable[["Message"], Awaitable[None]]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: ``ca`` verifies the other side; ``cert``/``key`` are this side's (a client's certificate
    and key for a Link; the broker's own for ``broker.BrokerFiles``, where ``ca`` signs the clients')."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)  # never in a log line or a test report
    tls: TlsFiles | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@functools.lru_cache(maxsize=64)
def _ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """One context per set of files, shared by every link that uses them (loading costs milliseconds)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


class _Client(aiomqtt.Client):
    """aiomqtt's client plus the two things a Link needs that aiomqtt drops: the reason code of each
    PUBACK (MQTT 5), and the moment the connection drops. The only code that touches aiomqtt's internals
    (``_client``, ``_on_publish``, ``_disconnected``, ``_lock``), as of aiomqtt 2.5 (requirements/*.lock pins it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self.pending_calls_threshold = 1 << 30  # aiomqtt logs a warning per publish beyond 10 in flight

    def publish_nowait(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[ReasonCode | None]:
        """Hands the message to paho now; the future resolves with the PUBACK's reason code."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        ack: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        if qos == 0:
            ack.set_result(None)
        else:
            self._acks[info.mid] = ack  # its PUBACK cannot be read before we return to the loop
        return ack

    def abandon(self) -> None:
        """The connection given up without waiting any longer: its socket closed, the drop marked done. aiomqtt's
        ``__aexit__`` waits for paho's on_disconnect with no timeout, and after a socket the loop stopped
        watching, it never comes (seen once at the end of the fleet demo: every socket closed, one device's
        stop waiting forever)."""
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._lock.locked():
            self._lock.release()

    @property
    def dropped(self) -> asyncio.Future[None]:
        """Done once the connection is gone (valid after connecting: aiomqtt replaces it on each connect)."""
        return self._disconnected

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)


class Link:
    """One device's (or the controller's) MQTT 5 session: connects, subscribes, reconnects with backoff
    (jittered, capped), calls ``on_connect`` after every (re)connect, hands each incoming message to the
    handler. ``run`` until ``stop`` is set; ``publish`` from any task of the same loop meanwhile."""

    def __init__(self, address: BrokerAddress, client_id: str, subscriptions: Sequence[str],
                 will: Message | None = None, keepalive_s: int = 30,
                 on_connect: Callable[[], Awaitable[None]] | None = None, clean_start: bool = True,
                 max_backoff_s: float = 5.0, min_backoff_s: float = 0.1, max_auth_refusals: int = 3,
                 connect_timeout_s: float = 10.0, max_inflight: int = MAX_INFLIGHT,
                 session_expiry_s: int = 3600, disconnect_timeout_s: float = 5.0) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        self.will = will
        self.keepalive_s = keepalive_s
        self.on_connect = on_connect
        self.clean_start = clean_start
        # With clean_start=False the broker keeps the session (subscriptions, QoS 1 messages queued while we
        # are away) this long after a disconnect; MQTT 5's default, 0, would end it at once.
        self.session_expiry_s = session_expiry_s
        self.max_backoff_s = max_backoff_s
        self.min_backoff_s = min(min_backoff_s, max_backoff_s)
        self.max_auth_refusals = max_auth_refusals
        self.connect_timeout_s = connect_timeout_s
        self.disconnect_timeout_s = disconnect_timeout_s
        self.max_inflight = max_inflight
        self.last_error: FleetError | None = None  # why the link is not connected (or was not, last)
        self.connects = 0  # sessions established so far
        self.refused_subscriptions: list[str] = []  # filters the broker's SUBACK refused, this session
        self._client: _Client | None = None
        self._up = asyncio.Event()
        self._ended = asyncio.Event()  # run() returned or raised
        self._running = False

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def wait_connected(self, timeout: float) -> None:
        """Returns once connected; ``LinkDown`` (naming the last error) after ``timeout`` seconds, or at once
        the error ``run`` ended with (``AuthRefused``)."""
        if self._up.is_set():
            return
        up, ended = asyncio.ensure_future(self._up.wait()), asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({up, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            ended.cancel()
        if self._up.is_set():
            return
        if self._ended.is_set() and isinstance(self.last_error, AuthRefused):
            raise self.last_error
        why = f"last error: {self.last_error}" if self.last_error else "no answer yet"
        if self._ended.is_set():
            raise LinkDown(self.client_id, f"its run() has ended ({why})")
        raise LinkDown(self.client_id, f"not connected to {self.address} within {timeout:g}s ({why})")

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Sessions until ``stop`` is set; then the will (if any) is published, as a clean stop means offline
        too, and the link disconnects. Raises ``AuthRefused`` (see the module), or what the handler or
        ``on_connect`` raised other than ``LinkDown`` (a bug of theirs: nothing retries it)."""
        if self._running:
            raise RuntimeError(f"link {self.client_id!r} is already running: two sessions would take over each other")
        self._running = True
        stopping = asyncio.ensure_future(stop.wait())
        failures = 0
        refusals = 0
        self._ended.clear()
        try:
            while not stop.is_set():
                connects = self.connects
                try:
                    await self._session(handler, stopping)
                    return
                except AuthRefused as exc:
                    self.last_error = exc
                    refusals += 1
                    if refusals >= self.max_auth_refusals:
                        raise
                except LinkDown as exc:
                    self.last_error = exc
                    refusals = 0
                if self.connects > connects:
                    failures = 0  # it was up: a fresh outage starts from the shortest delay
                await asyncio.wait({stopping}, timeout=self._backoff(failures))
                failures += 1
        finally:
            stopping.cancel()
            self._running = False
            self._ended.set()

    def _backoff(self, failures: int) -> float:
        """Equal jitter: half the capped exponential delay, plus a random share of the other half."""
        ceiling = min(self.max_backoff_s, self.min_backoff_s * 2.0 ** min(failures, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _new_client(self) -> _Client:
        address = self.address
        will = None if self.will is None else aiomqtt.Will(self.will.topic, self.will.payload, qos=1,
                                                          retain=self.will.retain)
        properties = None
        if not self.clean_start:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
        return _Client(address.host, address.port, username=address.username, password=address.password,
                       identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, will=will,
                       keepalive=self.keepalive_s, timeout=self.connect_timeout_s, properties=properties,
                       clean_start=self.clean_start, max_inflight_messages=self.max_inflight,
                       tls_context=_ssl_context(address.tls) if address.tls else None)

    async def _session(self, handler: Handler, stopping: asyncio.Future[Any]) -> None:
        """One connection, until ``stop`` (returns) or its loss (``LinkDown``)."""
        client = self._new_client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
            if code in (BAD_CREDENTIALS, NOT_AUTHORIZED):  # Mosquitto 2.0 answers 0x87 to any bad login
                raise AuthRefused(self.address.username, str(self.address), f"CONNACK 0x{code:02x} {exc.rc}") from None
            raise LinkDown(self.client_id, f"connection to {self.address} refused: {exc}") from None
        except aiomqtt.MqttError as exc:
            raise LinkDown(self.client_id, f"cannot connect to {self.address}: {exc}") from None
        try:
            await self._subscribe(client)
            self._client = client
            self._up.set()
            self.connects += 1
            self.last_error = None
            if self.on_connect is not None:
                await self.on_connect()
            await self._consume(client, handler, stopping)
        except aiomqtt.MqttError as exc:
            raise LinkDown(self.client_id, f"connection to {self.address} lost: {exc}") from None
        finally:
            self._up.clear()
            self._client = None
            await self._close(client, clean=stopping.done())

    async def _subscribe(self, client: _Client) -> None:
        if not self.subscriptions:
            return
        codes = await client.subscribe([(f, 1) for f in self.subscriptions])
        self.refused_subscriptions = [f for f, code in zip(self.subscriptions, codes, strict=False)
                                      if isinstance(code, ReasonCode) and code.is_failure]
        if self.refused_subscriptions:
            log.warning("%s: the broker refused the subscriptions %s", self.client_id, self.refused_subscriptions)

    async def _consume(self, client: _Client, handler: Handler, stopping: asyncio.Future[Any]) -> None:
        messages = aiter(client.messages)
        while not stopping.done():
            incoming = asyncio.ensure_future(anext(messages))
            await asyncio.wait({incoming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not incoming.done():
                incoming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await incoming
                return
            message = incoming.result()  # raises MqttError once the connection is lost
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            await handler(Message(message.topic.value, payload, bool(message.retain)))

    async def _close(self, client: _Client, clean: bool) -> None:
        if clean and self.will is not None and not client.dropped.done():
            with contextlib.suppress(FleetError, asyncio.TimeoutError):
                await asyncio.wait_for(self._publish_on(client, self.will.topic, self.will.payload,
                                                        self.will.retain, 1), timeout=2)
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), timeout=self.disconnect_timeout_s)
        except aiomqtt.MqttError:
            pass
        except asyncio.TimeoutError:
            log.warning("%s: no disconnect within %g s; connection abandoned", self.client_id,
                        self.disconnect_timeout_s)
            client.abandon()
        if client.dropped.done() and not client.dropped.cancelled():
            client.dropped.exception()  # seen: no "exception was never retrieved" when the loop did not read it

    async def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        """Returns once the broker acknowledged it (QoS 1), or once paho wrote it (QoS 0)."""
        client = self._client
        if client is None or not self._up.is_set():
            why = f": {self.last_error}" if self.last_error else ""
            raise LinkDown(self.client_id, f"not connected{why}")
        await self._publish_on(client, topic, payload, retain, qos)

    async def _publish_on(self, client: _Client, topic: str, payload: bytes, retain: bool, qos: int) -> None:
        try:
            ack = client.publish_nowait(topic, payload, qos, retain)
        except aiomqtt.MqttError as exc:
            raise LinkDown(self.client_id, f"cannot publish to {topic}: {exc}") from None
        if not ack.done():
            either: set[asyncio.Future[Any]] = {ack, client.dropped}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not ack.done():
            ack.cancel()
            raise LinkDown(self.client_id, f"the connection dropped before the broker acknowledged {topic}")
        code = ack.result()
        if code is not None and code.is_failure:
            if code.value == NOT_AUTHORIZED:
                raise NotAuthorized(self.address.username, topic, f"PUBACK 0x{code.value:02x} {code}")
            raise PublishRefused(self.address.username, topic, f"PUBACK 0x{code.value:02x} {code}")
