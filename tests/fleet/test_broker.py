"""The message engine against a real Mosquitto: who may connect, read and write what (the ACL), retained
desired states and notices, the last will, reconnection after a broker crash, and fan-out.

Measured on Mosquitto 2.0.11 (MQTT 5): a refused login is CONNACK 0x87 for a wrong password, an unknown
user and an anonymous client alike; a QoS 1 publish to a forbidden topic is PUBACK 0x87 (the client stays
connected); a subscription to a forbidden filter is granted in the SUBACK and then delivers nothing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.errors import AuthRefused, BrokerFailed, LinkDown, NotAuthorized, UsageError
from orchestrator.fleet import topics
from orchestrator.fleet.broker import BrokerFiles, MosquittoProcess, hash_password, verify_password
from orchestrator.fleet.transport import BrokerAddress, Link, Message, TlsFiles
from tests.fleet.conftest import Broker, Inbox, run, running

MODEL = "classifier"


def fast_link(address: BrokerAddress, client_id: str | None = None, subscriptions: Sequence[str] = (),
              will: Message | None = None) -> Link:
    """Short keepalive and backoff: a test notices a drop and reconnects within a fraction of a second."""
    return Link(address, client_id or address.username, subscriptions, will=will, keepalive_s=5,
                min_backoff_s=0.02, max_backoff_s=0.3)


def device_link(address: BrokerAddress, will: Message | None = None) -> Link:
    return fast_link(address, subscriptions=topics.device_filters(address.username), will=will)


def controller_link(broker: Broker, client_id: str, subscriptions: Sequence[str] = topics.CONTROLLER_FILTERS) -> Link:
    return fast_link(broker.controller, client_id, subscriptions)


async def nothing(message: Message) -> None:
    return None


def test_an_anonymous_client_is_refused(broker: Broker) -> None:
    async def body() -> None:
        client = aiomqtt.Client(broker.files.host, broker.files.port, protocol=aiomqtt.ProtocolVersion.V5)
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with client:
                pass
        assert refused.value.rc is not None and getattr(refused.value.rc, "value", None) == 0x87

    run(body())


def test_a_wrong_password_is_refused_and_not_retried_forever(broker: Broker) -> None:
    address = broker.device("wrong-pw")

    async def body() -> None:
        link = Link(BrokerAddress(address.host, address.port, address.username, "not-the-password"), "wrong-pw",
                    [], max_auth_refusals=2, min_backoff_s=0.01, max_backoff_s=0.05)
        with pytest.raises(AuthRefused, match="wrong-pw"):
            await link.run(nothing, asyncio.Event())
        assert isinstance(link.last_error, AuthRefused) and "CONNACK 0x87" in str(link.last_error)
        assert not link.connected
        with pytest.raises(AuthRefused):
            await link.wait_connected(1)
        with pytest.raises(LinkDown):
            await link.publish(topics.events("wrong-pw"), b"{}")

    run(body())


def test_a_stop_whose_disconnect_never_completes_gives_the_connection_up(broker: Broker,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """aiomqtt waits for paho's on_disconnect with no timeout; once it never came and a device's stop hung for
    good. Here paho's callback is taken away (the fault), and the link still stops, within its timeout."""
    address = broker.device("hung-stop")

    async def body() -> None:
        link = Link(address, "hung-stop", topics.device_filters("hung-stop"), disconnect_timeout_s=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(link.run(nothing, stop))
        await link.wait_connected(5)
        client = link._client
        assert client is not None
        client._client.on_disconnect = None  # the fault: aiomqtt's future for the disconnect is never resolved
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 3 and not link.connected
        assert client.dropped.done()
        again = Link(address, "hung-stop", [])  # the broker took the first session down: a new one connects
        async with running((again, nothing)):
            assert again.connected

    run(body())
    assert "no disconnect within 0.5 s; connection abandoned" in caplog.text


def test_a_device_reads_the_desired_state_published_while_it_was_offline(broker: Broker) -> None:
    async def body() -> None:
        async with running((controller := controller_link(broker, "ctl-retained", []), nothing)):
            await controller.publish(topics.desired("late-1", MODEL), b'{"version": 3}', retain=True)
        address = broker.device("late-1")  # the device did not even exist when it was published
        inbox = Inbox()
        async with running((device_link(address), inbox)):
            await inbox.wait_for(lambda box: bool(box.on(topics.desired("late-1", MODEL))))
        (received,) = inbox.on(topics.desired("late-1", MODEL))
        assert received.payload == b'{"version": 3}' and received.retain

    run(body())


def test_a_persistent_session_keeps_what_arrived_while_the_controller_was_away(broker: Broker) -> None:
    address = broker.device("patient-1")

    async def body() -> None:
        def controller() -> Link:
            return Link(broker.controller, "ctl-persistent", topics.CONTROLLER_FILTERS, clean_start=False,
                        keepalive_s=5, min_backoff_s=0.02, max_backoff_s=0.3)

        async with running((controller(), nothing)):
            pass  # the session and its subscriptions now exist; the controller goes away
        async with running((device := device_link(address), nothing)):
            await device.publish(topics.events("patient-1"), b'{"seq": 1}')
        inbox = Inbox()
        async with running((controller(), inbox)):
            await inbox.wait_for(lambda box: bool(box.on(topics.events("patient-1"))))
        assert [m.payload for m in inbox.on(topics.events("patient-1"))] == [b'{"seq": 1}']

    run(body())


def test_a_device_cannot_read_another_devices_desired_state(broker: Broker) -> None:
    mine, other = broker.device("reader-a"), broker.device("reader-b")

    async def body() -> None:
        async with running((controller := controller_link(broker, "ctl-acl-read", []), nothing)):
            await controller.publish(topics.desired(other.username, MODEL), b"theirs", retain=True)
            await controller.publish(topics.desired(mine.username, MODEL), b"mine", retain=True)
        inbox = Inbox()
        wanted = [topics.desired(other.username, MODEL), "orch/v1/dev/+/desired/+",
                  topics.desired(mine.username, MODEL)]
        snoop = fast_link(mine, subscriptions=wanted)
        async with running((snoop, inbox)):
            await inbox.wait_for(lambda box: bool(box.on(topics.desired(mine.username, MODEL))))
            await asyncio.sleep(0.3)  # the other's retained message would have come with it
        assert {m.payload for m in inbox.messages} == {b"mine"}  # (overlapping filters may deliver it twice)

    run(body())


def test_a_device_cannot_publish_another_devices_events(broker: Broker) -> None:
    intruder, victim = broker.device("writer-a"), broker.device("writer-b")

    async def body() -> None:
        watched = Inbox()
        controller = controller_link(broker, "ctl-acl-write")
        async with running((controller, watched), (link := device_link(intruder), nothing)):
            with pytest.raises(NotAuthorized, match="0x87"):
                await link.publish(topics.events(victim.username), b'{"seq": 1}')
            with pytest.raises(NotAuthorized):
                await link.publish(topics.desired(intruder.username, MODEL), b"self-promotion", retain=True)
            assert link.connected  # a refused publish does not cost the connection
            await link.publish(topics.events(intruder.username), b'{"seq": 1}')
            await watched.wait_for(lambda box: bool(box.on(topics.events(intruder.username))))
        assert watched.on(topics.events(victim.username)) == []

    run(body())


WILL_CLIENT = """
import asyncio, sys
from orchestrator.fleet.transport import BrokerAddress, Link, Message

async def main() -> None:
    host, port, user, password, topic = sys.argv[1:6]
    link = Link(BrokerAddress(host, int(port), user, password), user, [], keepalive_s=5,
                will=Message(topic, b"offline", retain=True))
    async def online() -> None:
        await link.publish(topic, b"online", retain=True)
        print("online", flush=True)
    link.on_connect = online
    async def ignore(message: Message) -> None:
        return None
    await link.run(ignore, asyncio.Event())

asyncio.run(main())
"""


def test_the_last_will_says_offline_when_a_device_dies_without_disconnecting(broker: Broker) -> None:
    address = broker.device("mortal-1")
    presence = topics.presence("mortal-1")

    async def body() -> None:
        watched = Inbox()
        async with running((controller_link(broker, "ctl-will"), watched)):
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WILL_CLIENT, address.host, str(address.port), address.username,
                address.password or "", presence, stdout=asyncio.subprocess.PIPE)
            assert client.stdout is not None
            try:
                assert await asyncio.wait_for(client.stdout.readline(), 10) == b"online\n"
                await watched.wait_for(lambda box: [m.payload for m in box.on(presence)] == [b"online"])
            finally:
                client.kill()  # SIGKILL: the socket closes, no DISCONNECT is sent
                await client.wait()
            await watched.wait_for(lambda box: [m.payload for m in box.on(presence)] == [b"online", b"offline"])
        later = Inbox()  # and it is retained: whoever looks later reads "offline"
        async with running((controller_link(broker, "ctl-will-later"), later)):
            await later.wait_for(lambda box: bool(box.on(presence)))
        assert [(m.payload, m.retain) for m in later.on(presence)] == [(b"offline", True)]

    run(body(), timeout_s=30)


def test_a_clean_stop_publishes_the_will_too(broker: Broker) -> None:
    address = broker.device("polite-1")
    presence = topics.presence("polite-1")

    async def body() -> None:
        watched = Inbox()
        async with running((controller_link(broker, "ctl-polite"), watched)):
            link = device_link(address, will=Message(presence, b"offline", retain=True))
            async with running((link, nothing)):
                pass
            await watched.wait_for(lambda box: [m.payload for m in box.on(presence)] == [b"offline"])

    run(body())


def test_every_device_reads_the_fleet_notice(broker: Broker) -> None:
    addresses = broker.devices([f"notice-{n}" for n in range(3)])

    async def body() -> None:
        async with running((controller := controller_link(broker, "ctl-notice", []), nothing)):
            await controller.publish(topics.FLEET_NOTICE, b'{"block": ["v7"]}', retain=True)
            inboxes = {device: Inbox() for device in addresses}
            async with running(*((device_link(address), inboxes[device]) for device, address in addresses.items())):
                for inbox in inboxes.values():
                    await inbox.wait_for(lambda box: bool(box.on(topics.FLEET_NOTICE)))
            await controller.publish(topics.FLEET_NOTICE, b"", retain=True)  # an empty retained payload clears it
        for inbox in inboxes.values():
            assert [(m.payload, m.retain) for m in inbox.on(topics.FLEET_NOTICE)] == [(b'{"block": ["v7"]}', True)]

    run(body())


def test_the_controller_sees_the_events_of_every_device(broker: Broker) -> None:
    addresses = broker.devices([f"talker-{n}" for n in range(5)])

    async def body() -> None:
        watched = Inbox()
        links = {device: device_link(address) for device, address in addresses.items()}
        talkers = [(link, nothing) for link in links.values()]
        async with running((controller_link(broker, "ctl-events"), watched), *talkers):
            await asyncio.gather(*(link.publish(topics.events(device), f'{{"seq": 1, "from": "{device}"}}'.encode())
                                   for device, link in links.items()))
            await watched.wait_for(lambda box: len([m for m in box.messages if "/events" in m.topic]) == 5)
        senders = sorted(parsed[0] for m in watched.messages if (parsed := topics.parse(m.topic)) is not None
                         and parsed[1] is topics.Kind.EVENTS)
        assert senders == sorted(addresses)

    run(body())


def test_messages_are_handled_in_order_one_at_a_time(broker: Broker) -> None:
    address = broker.device("orderly-1")
    seen: list[int] = []
    active = [0, 0]  # now, most at once

    async def slow(message: Message) -> None:
        active[0] += 1
        active[1] = max(active)
        await asyncio.sleep(0.001)
        if message.topic == topics.ack("orderly-1"):
            seen.append(int(message.payload))
        active[0] -= 1

    async def body() -> None:
        controller = controller_link(broker, "ctl-order", [])
        async with running((controller, nothing), (device_link(address), slow)):
            await asyncio.gather(*(controller.publish(topics.ack("orderly-1"), str(n).encode()) for n in range(200)))
            deadline = time.monotonic() + 5
            while len(seen) < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert seen == list(range(200))
        assert active[1] == 1

    run(body())


def test_a_link_reconnects_by_itself_after_the_broker_is_killed(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    address = broker.device("survivor-1")
    presence = topics.presence("survivor-1")

    async def body() -> None:
        watched = Inbox()
        link = device_link(address)

        async def announce() -> None:
            await link.publish(presence, b"online", retain=True)

        link.on_connect = announce
        controller = controller_link(broker, "ctl-restart")
        async with running((controller, watched), (link, nothing)):
            await watched.wait_for(lambda box: len(box.on(presence)) == 1)
            broker.process.kill()
            deadline = time.monotonic() + 5
            while (link.connected or controller.connected) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not link.connected and isinstance(link.last_error, LinkDown)
            with pytest.raises(LinkDown):
                await link.publish(topics.events("survivor-1"), b"{}")
            await asyncio.sleep(0.5)  # a few failed attempts against the dead port
            broker.process.start()  # the same port, nothing kept (persistence false); blocks the loop ~50 ms
            await link.wait_connected(5)
            await controller.wait_connected(5)
            # on_connect ran again and republished presence, which the reconnected controller reads (retained)
            await watched.wait_for(lambda box: len(box.on(presence)) == 2)
            assert link.connects == 2 and controller.connects == 2

    run(body(), timeout_s=30)


def test_one_link_fans_out_a_thousand_retained_publishes(broker: Broker) -> None:
    devices = [f"fan-{n}" for n in range(1000)]

    async def body() -> float:
        async with running((controller := controller_link(broker, "ctl-fanout", []), nothing)):
            started = time.perf_counter()
            await asyncio.gather(*(controller.publish(topics.desired(d, MODEL), b'{"version": 9}', retain=True)
                                   for d in devices))
            elapsed = time.perf_counter() - started
        address = broker.device(devices[-1])
        inbox = Inbox()
        async with running((device_link(address), inbox)):
            await inbox.wait_for(lambda box: bool(box.on(topics.desired(devices[-1], MODEL))))
        return elapsed

    elapsed = run(body())
    print(f"1,000 concurrent QoS 1 retained publishes from one link: {elapsed:.3f} s")
    assert elapsed < 10


def test_the_broker_accepts_our_password_hashes_for_many_users(broker: Broker) -> None:
    early = broker.device("early-1")
    names = [f"many-{n:03d}" for n in range(200)]

    async def body() -> None:
        first = device_link(early)
        async with running((first, nothing)):
            addresses = broker.devices(names)  # one password file write, one reload
            links = [fast_link(address) for address in addresses.values()]
            async with running(*((link, nothing) for link in links)):
                assert all(link.connected for link in links)
            assert first.connected and first.connects == 1  # the reload left it connected

    run(body(), timeout_s=30)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is missing")
def test_our_hash_is_mosquitto_passwd_s(tmp_path: Path) -> None:
    file = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(file), "alice", "s3cret-pw"], check=True, capture_output=True)
    user, _, theirs = file.read_text().strip().partition(":")
    assert user == "alice" and theirs.startswith("$7$101$")
    salt = base64.b64decode(theirs.split("$")[3])
    assert hash_password("s3cret-pw", salt=salt) == theirs
    assert verify_password("s3cret-pw", theirs) and not verify_password("s3cret-px", theirs)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey],
                 ca: bool = False, ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _write_pem(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> TlsFiles:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return TlsFiles(folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key")


def test_over_tls_the_certificate_name_is_the_user(tmp_path: Path, make_broker: Callable[..., Broker]) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("fleet test CA", ca_key, ("fleet test CA", ca_key), ca=True)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _write_pem(tmp_path, "server", _certificate("127.0.0.1", server_key, ("fleet test CA", ca_key),
                                                         ip="127.0.0.1"), server_key)
    client = _write_pem(tmp_path, "tls-dev-1", _certificate("tls-dev-1", client_key, ("fleet test CA", ca_key)),
                        client_key)
    broker = make_broker(tls=server)
    tls_port = broker.files.tls_port
    assert tls_port is not None

    async def body() -> None:
        # No password and no entry in the password file: the certificate is the credential, its CN the user.
        address = BrokerAddress(broker.files.host, tls_port, "ignored-by-the-broker", tls=client)
        watched = Inbox()
        link = fast_link(address, "tls-dev-1", topics.device_filters("tls-dev-1"))
        async with running((controller_link(broker, "ctl-tls"), watched), (link, nothing)):
            await link.publish(topics.events("tls-dev-1"), b'{"seq": 1}')
            with pytest.raises(NotAuthorized):
                await link.publish(topics.events("other-dev"), b'{"seq": 1}')
            await watched.wait_for(lambda box: bool(box.on(topics.events("tls-dev-1"))))

    run(body())


def test_the_password_file_is_private_and_read_back(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "broker", port=1883)
    files.write()
    password = files.add_user("d1")
    files.add_users(["d2", "d3"])
    files.remove_user("d3")
    assert stat.S_IMODE(files.passwords.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.config.stat().st_mode) == 0o600
    again = BrokerFiles(tmp_path / "broker", port=1883)
    assert again.users == ["d1", "d2"]
    (line,) = [row for row in files.passwords.read_text().splitlines() if row.startswith("d1:")]
    assert verify_password(password, line.partition(":")[2])
    with pytest.raises(UsageError):
        files.add_user("d1/../d2")
    with pytest.raises(UsageError, match="the controller's user name"):
        files.add_users(["d4", "controller"])  # a device by that name would be let into every device's topics


def test_a_broker_that_cannot_start_says_why(broker: Broker, tmp_path: Path) -> None:
    taken = BrokerFiles(tmp_path / "second", port=broker.files.port)  # the port the module's broker holds
    with pytest.raises(BrokerFailed, match=r"(?s)exited with .*Address already in use"):
        MosquittoProcess(taken).start()
