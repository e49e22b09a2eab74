"""A Mosquitto broker that we configure and run ourselves: for the tests, the simulation and small fleets.

``BrokerFiles`` owns one folder: ``mosquitto.conf``, the ACL (``topics.acl_lines``), the password file
and the broker's log. The broker holds nothing irreplaceable (``persistence false`` by default): the
controller republishes desired states and notices (retained) after a broker restart, devices republish
their reports and presence, so a killed broker loses nothing that matters.

Passwords are written in Mosquitto 2.0's own format, by Python (no ``mosquitto_passwd`` process per
device), one line per user::

    user:$7$101$<base64 12-byte salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, 101 rounds), 64 bytes>

``MosquittoProcess`` starts ``mosquitto -c mosquitto.conf`` as a child that dies with us, waits until its
port accepts a connection, reloads the password and ACL files on SIGHUP (``reload`` waits until the broker
has done it), and is killed (SIGKILL), stopped (SIGTERM) or restarted on the same port.

With ``tls=TlsFiles(ca, cert, key)`` a second listener takes TLS only, with ``require_certificate true``
(``ca`` signs the clients' certificates; ``cert``/``key`` are the broker's) and ``use_identity_as_username
true``: the certificate's Common Name is the user name the ACL's ``%u`` sees, and no password is asked.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from orchestrator import faults
from orchestrator.errors import BrokerFailed, UsageError
from orchestrator.fleet import topics
from orchestrator.fleet.transport import TlsFiles
from orchestrator.store.atomic import atomic_file

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS in Mosquitto 2.0)
SALT_BYTES = 12
CONTROLLER_USER = "controller"


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The password file's hash of ``password``: ``$7$`` is Mosquitto 2.0's PBKDF2-SHA512."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``encoded`` (a ``$7$`` hash, ours or mosquitto_passwd's) is the hash of ``password``."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2])), digest)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick; another process could still take it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def find_mosquitto() -> str | None:
    """The broker's binary: on PATH, or where Debian puts it (/usr/sbin, not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def _plain_path(path: Path) -> str:
    # mosquitto.conf splits values on spaces: a path with one would name another file.
    text = str(path)
    if any(ch.isspace() for ch in text):
        raise UsageError(f"{text!r}: Mosquitto's config cannot name a path with spaces; use another folder")
    return text


class BrokerFiles:
    """The broker's folder: its config, ACL, password file and log. Users are kept in memory and the whole
    password file is rewritten atomically on each change (``add_users`` adds thousands in one write); an
    existing password file is read back, so the folder can outlive the process that made it."""

    def __init__(self, folder: Path, port: int, host: str = "127.0.0.1", controller_user: str = CONTROLLER_USER,
                 tls: TlsFiles | None = None, tls_port: int | None = None, persistence: bool = False,
                 max_inflight_messages: int = 100, max_queued_messages: int = 100_000, run_as: str | None = None,
                 log_file: bool = True) -> None:
        self.folder = folder.resolve()
        # The user Mosquitto drops to once it has bound its ports; by default whoever runs it (tests run as root
        # here, and Mosquitto's own 'mosquitto' user could not read these 0600 files).
        self.run_as = run_as or pwd.getpwuid(os.geteuid()).pw_name
        self.log_file = log_file  # False: to stderr (a container's log)
        self.host = host
        self.port = port
        self.controller_user = topics.check_device_id(controller_user)
        self.tls = tls
        self.tls_port = tls_port if tls_port is not None or tls is None else free_port(host)
        self.persistence = persistence
        # Per client, broker -> client: QoS 1 messages in flight, then queued (beyond the queue, Mosquitto
        # drops them silently): the controller takes every device's events, so its queue must hold a burst.
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self._hashes: dict[str, str] = {}
        if self.passwords.exists():
            for line in self.passwords.read_text().splitlines():
                user, sep, encoded = line.partition(":")
                if sep:
                    self._hashes[user] = encoded

    @property
    def config(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.folder / "acl"

    @property
    def passwords(self) -> Path:
        return self.folder / "passwords"

    @property
    def log(self) -> Path:
        return self.folder / "mosquitto.log"

    @property
    def users(self) -> list[str]:
        return sorted(self._hashes)

    def config_lines(self) -> list[str]:
        lines = [
            "# Written by orchestrator.fleet.broker; rewritten on each start.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {_plain_path(self.passwords)}",
            f"acl_file {_plain_path(self.acl)}",
            # Run as root (CI), Mosquitto would switch to the 'mosquitto' user, who cannot read this folder.
            f"user {self.run_as}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {_plain_path(self.folder)}/",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
            f"log_dest file {_plain_path(self.log)}" if self.log_file else "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"listener {self.port} {self.host}",
        ]
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {_plain_path(self.tls.ca)}",
                f"certfile {_plain_path(self.tls.cert)}",
                f"keyfile {_plain_path(self.tls.key)}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        return lines

    def write(self) -> None:
        """The config and the ACL (the password file is written by each change of users)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_private(self.config, self.config_lines())
        self._write_private(self.acl, topics.acl_lines(self.controller_user))
        if not self.passwords.exists():
            self._write_passwords()

    def add_controller(self) -> str:
        """A new random password for the controller's user (the ACL's ``user`` line: all of ``orch/v1/``)."""
        password = secrets.token_urlsafe(18)
        self.set_password(self.controller_user, password)
        return password

    def add_user(self, name: str) -> str:
        """A new random password for ``name`` (a device, or the controller's user), written to the password file."""
        if name == self.controller_user:
            return self.add_controller()
        return self.add_users([name])[name]

    def add_users(self, names: Iterable[str]) -> dict[str, str]:
        """Random passwords for many devices, in one write of the password file (enrolment: the controller's
        user name is refused here, as a device by that name would get the controller's rights)."""
        passwords = {topics.check_device_id(name): secrets.token_urlsafe(18) for name in names}
        if self.controller_user in passwords:
            raise UsageError(f"{self.controller_user!r} is the controller's user name, which may read and write "
                             f"every device's topics: choose another device id")
        self._hashes.update({name: hash_password(password) for name, password in passwords.items()})
        self._write_passwords()
        return passwords

    def set_password(self, name: str, password: str) -> None:
        self._hashes[topics.check_device_id(name)] = hash_password(password)
        self._write_passwords()

    def remove_user(self, name: str) -> None:
        """The user can no longer log in once the broker reloads (a connected client stays connected)."""
        if self._hashes.pop(name, None) is not None:
            self._write_passwords()

    def _write_passwords(self) -> None:
        self._write_private(self.passwords, [f"{user}:{encoded}" for user, encoded in sorted(self._hashes.items())])

    @staticmethod
    def _write_private(path: Path, lines: list[str]) -> None:
        """Atomic, mode 0600 (from before the first byte): the password file's hashes are secrets."""
        faults.before_write(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("".join(f"{line}\n" for line in lines).encode())


def _die_with_parent() -> None:
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MosquittoProcess:
    """``mosquitto -c <folder>/mosquitto.conf`` as our child. It dies with the *thread* that started it
    (PR_SET_PDEATHSIG): start it from the main thread or one that outlives it, not from a pool's worker."""

    def __init__(self, files: BrokerFiles, binary: str | None = None) -> None:
        self.files = files
        self.binary = binary or find_mosquitto()
        self.process: subprocess.Popen[bytes] | None = None
        self.output = files.folder / "mosquitto.out"  # what it prints before its log file is open

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> MosquittoProcess:
        if self.binary is None:
            raise BrokerFailed("mosquitto is not installed (Debian: apt-get install mosquitto; scripts/system-deps)")
        if self.running:
            return self
        self.files.write()
        log_from = self._log_size()
        with self.output.open("ab") as output:
            self.process = subprocess.Popen([self.binary, "-c", str(self.files.config)], stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT,
                                            # preexec_fn: runs before exec, touches no Python locks.
                                            preexec_fn=_die_with_parent)  # noqa: PLW1509
        self._wait_listening(log_from, timeout_s)
        return self

    def _wait_listening(self, log_from: int, timeout_s: float) -> None:
        """Until its log says it runs (its listeners are open by then) and each port accepts a connection:
        the port alone could be another process's, which our broker would then fail to bind."""
        deadline = time.monotonic() + timeout_s
        ports = [self.files.port] + ([self.files.tls_port] if self.files.tls_port is not None else [])
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerFailed(f"mosquitto exited with {self.process.returncode} on start:\n{self.log_tail()}")
            if b" running" in self._log_since(log_from) and all(self._accepts(port) for port in ports):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerFailed(f"mosquitto did not listen on {self.files.host}:{ports} within {timeout_s:g}s:"
                                   f"\n{self.log_tail()}")
            time.sleep(0.01)

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.files.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def reload(self, timeout_s: float = 5.0) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files; returns once its log says it did (one
        thread handles every client, so a connection opened after that meets the new files)."""
        if not self.running or self.process is None:
            raise BrokerFailed(f"mosquitto is not running; cannot reload:\n{self.log_tail()}")
        log_from = self._log_size()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while b"Reloading config" not in self._log_since(log_from):
            if not self.running:
                raise BrokerFailed(f"mosquitto died on reload:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerFailed(f"mosquitto did not reload within {timeout_s:g}s:\n{self.log_tail()}")
            time.sleep(0.01)

    def _log_size(self) -> int:
        try:
            return self.files.log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.files.log.open("rb") as log:
                log.seek(offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def kill(self) -> None:
        """SIGKILL, like a crash or a power cut: clients see their connections drop, wills fire nowhere."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM and wait (Mosquitto closes its clients' connections); SIGKILL after ``grace_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            self.process.wait()

    def restart(self, timeout_s: float = 10.0, kill: bool = False) -> MosquittoProcess:
        """A new broker process on the same port(s), from the same folder."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        found = []
        for path in (self.output, self.files.log):
            with contextlib.suppress(OSError):
                found += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(found[-lines:]) or "(mosquitto wrote no log)"

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
