"""A device for the fleet agent's unit tests: the use-case tests' twin-backed repository copy
(``tests/unit/usecases/conftest.py``), a controller key, packages served over HTTP on 127.0.0.1, and an
``Agent`` on a virtual epoch clock. Nothing here talks MQTT: messages go in as bytes and come out as
``Outgoing`` values.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator import faults
from orchestrator.delivery.signing import key_id
from orchestrator.fleet import topics
from orchestrator.fleet.agent import Agent, AgentOptions, Outgoing
from orchestrator.fleet.documents import INSTALL, REVERT, Block, Desired, Notice, PackageRef, seal
from orchestrator.sample import Variant
from orchestrator.triton.twin import VirtualClock
from tests.conftest import BuildKey, classifier_only
from tests.unit.usecases.conftest import MODEL, ROOT, Backends, Env

DEVICE = "cam-017"
LABELS = {"site": "plant-1", "hw": "jetson-xavier-nx", "role": "canary"}
EPOCH = 1_800_000_000.0  # the virtual clock's start: documents carry seconds since the epoch


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Site:
    """Packages as .tar.gz over HTTP: ``url`` and ``sha256`` per variant."""

    root: Path
    base: str

    def add(self, name: str, folder: Path) -> tuple[str, str]:
        archive = self.root / f"{name}.tar.gz"
        if not archive.exists():
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(folder, arcname="pkg")
        return f"{self.base}/{archive.name}", hashlib.sha256(archive.read_bytes()).hexdigest()


def serve_site(root: Path) -> Iterator[Site]:
    """A ``Site`` on a free port for as long as the generator runs (a fixture's body)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def make_env(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path], monkeypatch: pytest.MonkeyPatch
             ) -> Env:
    """What tests/unit/usecases' ``env`` fixture builds, here."""
    for name in (faults.ENV, faults.ENV_WRITE, "ORCH_TRUSTED_KEYS", "ORCH_ALLOW_UNSIGNED"):
        monkeypatch.delenv(name, raising=False)
    repository, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    (state / "trusted_keys").mkdir()
    shutil.copy(build_key.public, state / "trusted_keys" / build_key.public.name)
    env = Env(tmp_path, repository, state, VirtualClock(EPOCH), Backends(), None, packages,  # type: ignore[arg-type]
              build_key, monkeypatch)
    env.twin = env.make_twin()
    return env


@dataclass
class Device:
    """One device: its repository on a twin, its agent, and the controller that signs for it."""

    env: Env
    site: Site
    controller: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    name: str = DEVICE
    options: AgentOptions = field(init=False)
    agent_clock: Callable[[], float] | None = None  # None: the twin's virtual clock
    serial: int = 0
    seen: int = 0  # the highest event number a helper returned: resends are left out
    agent: Agent = field(init=False)

    def __post_init__(self) -> None:
        self.options = AgentOptions(self.name, labels=LABELS, models=(MODEL,))
        self.agent = self.start()

    @property
    def clock(self) -> VirtualClock:
        return self.env.clock

    def start(self) -> Agent:
        """A fresh agent on the same state folder (a restarted device)."""
        orch = self.env.orchestrator(actor="fleet", lock_timeout_s=0.5)
        public = self.controller.public_key()
        self.agent = Agent(orch, self.options, {key_id(public): public}, clock=self.agent_clock or self.clock)
        return self.agent

    def package(self, variant: Variant) -> PackageRef:
        url, sha = self.site.add(variant.value, self.env.packages[variant])
        return PackageRef(url, sha)

    def desired(self, intent: str = INSTALL, variant: Variant = Variant.BETTER, *, serial: int | None = None,
                device: str | None = None, bake_s: float = 60.0, revert_to: int | None = None,
                expires_in: float = 3600.0, rollout: str = "r1", package: PackageRef | None = None) -> dict[str, Any]:
        if serial is None:
            self.serial += 1
            serial = self.serial
        now = (self.agent_clock or self.clock)()
        return Desired(device or self.name, serial, now, now + expires_in, MODEL, intent,
                       package or self.package(variant), rollout, bake_s,
                       revert_to if intent == REVERT else None).to_json()

    def sealed(self, doc: dict[str, Any], key: Ed25519PrivateKey | None = None) -> bytes:
        return seal(doc, key or self.controller)

    def fresh(self, messages: list[Outgoing]) -> list[dict[str, Any]]:
        """The events among ``messages`` sent for the first time."""
        found = [e for e in events(messages) if e["seq"] > self.seen]
        self.seen = max([self.seen, *(e["seq"] for e in found)])
        return found

    def send(self, doc: dict[str, Any], key: Ed25519PrivateKey | None = None) -> list[dict[str, Any]]:
        """The document arrives; then every job it queued runs. The events published meanwhile."""
        return self.deliver(topics.desired(self.name, MODEL), self.sealed(doc, key))

    def deliver(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        return self.fresh(self.agent.on_message(topic, payload) + self.agent.work())

    def notice(self, *blocks: Block, serial: int = 1) -> list[dict[str, Any]]:
        return self.deliver(topics.FLEET_NOTICE, seal(Notice(serial, self.clock(), tuple(blocks)).to_json(),
                                                      self.controller))

    def tick(self, seconds: float = 0.0) -> list[dict[str, Any]]:
        """``seconds`` later: the new events of a tick (resends left out)."""
        self.clock.sleep(seconds)
        return self.fresh(self.agent.tick())

    def report(self) -> dict[str, Any]:
        return json.loads(self.agent.report().payload)


def events(messages: list[Outgoing], kind: str | None = None) -> list[dict[str, Any]]:
    """The events among ``messages`` (of one kind), in order."""
    found = [json.loads(m.payload) for m in messages if m.topic.endswith("/events")]
    return [e for e in found if kind is None or e["kind"] == kind]


def kinds(found: list[dict[str, Any]], skip_journal: bool = True) -> list[str]:
    return [e["kind"] for e in found if not (skip_journal and e["kind"] == "journal")]


def of(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in found if e["kind"] == kind]
