"""A whole fleet's control side on one machine, for the demo, the benchmark and the tests.

A real Mosquitto (our config, a free loopback port, per-device users), a release key and a
controller key, a package server (HTTP on loopback, what a release bucket is in a real fleet), and
the controller as a real ``orchestrate fleet serve`` process that can be SIGKILLed and started
again. Devices come from ``simulate.py`` (agents on Triton twins) and real embedded Tritons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.delivery.signing import generate_keypair, load_private_key, load_trusted_keys, sign_package
from orchestrator.errors import FleetError
from orchestrator.fleet.broker import BrokerFiles, MosquittoProcess, free_port
from orchestrator.fleet.controller import Controller
from orchestrator.fleet.documents import PackageRef
from orchestrator.fleet.lab_device import RealDevice, terminate
from orchestrator.fleet.lab_shards import ShardedFleet
from orchestrator.fleet.plan_file import sign_plan
from orchestrator.fleet.simulate import SimulatedFleet
from orchestrator.fleet.status import RolloutStatus, rollout_status
from orchestrator.fleet.store import FleetStore
from orchestrator.fleet.transport import BrokerAddress
from orchestrator.store.atomic import write_atomic


def pack(folder: Path, archive: Path) -> str:
    """``folder`` as a reproducible .tar.gz (sorted, no times or owners); returns its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(folder)))
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    compressed = gzip.compress(buffer.getvalue(), mtime=0)
    write_atomic(archive, compressed)
    return hashlib.sha256(compressed).hexdigest()


def memory_folder(prefix: str) -> Path:
    """A new folder in memory where the machine has one (/dev/shm), else in the temp folder: simulated devices'
    disks. Their stores fsync every write (about 30 a device per install), which on a disk more than doubles a
    wave's time."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PackageServer:
    """Serves a folder over HTTP on a loopback port, in a daemon thread."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="package-server", daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def publish(self, package: Path, name: str) -> PackageRef:
        """A package folder packed into the served folder: its URL and sha256."""
        sha = pack(package, self.folder / name)
        return PackageRef(self.url(name), sha)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BuildKey:
    """The build side's package-signing key under ``folder``; ``trusted`` holds its public half."""

    def __init__(self, folder: Path) -> None:
        self.key, self.trusted = folder / "build.key", folder / "trusted"
        if not self.key.exists():
            self.trusted.mkdir(parents=True, exist_ok=True)
            generate_keypair(self.key, self.trusted / "build.pub")

    def sign(self, package: Path) -> Path:
        sign_package(package, self.key)
        return package


class FleetLab:
    def __init__(self, root: Path, gate_interval_s: float = 0.5, mosquitto: str | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.gate_interval_s = gate_interval_s
        keys = self.root / "keys"
        (keys / "release_keys").mkdir(parents=True, exist_ok=True)
        self.release_key, self.controller_key = keys / "release.key", keys / "controller.key"
        self.controller_keys = keys / "controller_keys"  # what devices trust
        self.controller_keys.mkdir(exist_ok=True)
        if not self.release_key.exists():
            generate_keypair(self.release_key, keys / "release_keys" / "release.pub")
            generate_keypair(self.controller_key, self.controller_keys / "controller.pub")
        self.broker_files = BrokerFiles(self.root / "broker", port=free_port())
        self.broker_files.write()
        password = self.broker_files.add_user(self.broker_files.controller_user)
        write_atomic(keys / "controller.mqtt", password + "\n")
        self.broker = MosquittoProcess(self.broker_files, mosquitto).start()
        self.packages = PackageServer(self.root / "packages")
        self.config = self.root / "controller.yaml"
        write_atomic(self.config, yaml.safe_dump({
            "store": str(self.root / "fleet.db"),
            "broker": {"host": self.broker_files.host, "port": self.broker_files.port,
                       "username": self.broker_files.controller_user, "password_file": str(keys / "controller.mqtt")},
            "key": str(self.controller_key), "release_keys": str(keys / "release_keys"),
            "broker_dir": str(self.broker_files.folder), "gate_interval_s": gate_interval_s,
            "metrics": {"address": "127.0.0.1", "port": free_port()}}))
        self.store = FleetStore(self.root / "fleet.db")
        self.controller = Controller(self.store, load_private_key(self.controller_key),
                                     load_trusted_keys(keys / "release_keys"))
        self.process: subprocess.Popen[bytes] | None = None
        self.controller_log = self.root / "controller.log"

    @property
    def metrics_url(self) -> str:
        metrics = yaml.safe_load(self.config.read_text())["metrics"]
        return f"http://{metrics['address']}:{metrics['port']}/metrics"

    def address(self, user: str, password: str) -> BrokerAddress:
        return BrokerAddress(self.broker_files.host, self.broker_files.port, user, password)

    # --- devices ------------------------------------------------------------------------------
    def enrol(self, devices: Mapping[str, Mapping[str, str]]) -> dict[str, BrokerAddress]:
        """Devices with their labels in the controller's store, and their broker users (one reload)."""
        self.store.enrol(devices)
        passwords = self.broker_files.add_users(devices)
        self.broker.reload()
        return {d: self.address(d, p) for d, p in passwords.items()}

    # --- the controller process ---------------------------------------------------------------
    def start_controller(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with self.controller_log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "orchestrator", "fleet", "serve", "--config",
                                             str(self.config)], stdout=log, stderr=log, env=os.environ.copy())

    def kill_controller(self) -> None:
        """SIGKILL: no cleanup, whatever step it was in."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop_controller(self) -> None:
        terminate(self.process)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "fleet", *args, "--config", str(self.config)],
                              capture_output=True, text=True, check=False)

    def devices(self, root: Path, count: int, package_keys: Path,
                real: Mapping[str, tuple[Mapping[str, str], str]] | None = None, report_s: float = 5.0,
                **simulated: Any) -> tuple[SimulatedFleet, list[RealDevice]]:
        """``count`` simulated devices under ``root/sims`` and the ``real`` ones (id -> (labels, hardware)), all
        enrolled with broker users; the real ones started (Triton and agent), nothing simulated connected yet.
        ``package_keys``: a folder of the ``*.pub`` package keys every device trusts."""
        sims = SimulatedFleet(root / "sims", count, controller_keys=load_trusted_keys(self.controller_keys),
                              package_keys=sorted(package_keys.glob("*.pub")), report_s=report_s,
                              **simulated).build()
        real = real or {}
        addresses = self.enrol({**sims.labels(), **{d: labels for d, (labels, _) in real.items()}})
        sims.broker_for = addresses.__getitem__
        return sims, self._start_real(root, real, addresses, package_keys, report_s)

    def sharded_devices(self, root: Path, count: int, processes: int, package_keys: Path,
                        real: Mapping[str, tuple[Mapping[str, str], str]] | None = None, report_s: float = 5.0,
                        **simulated: Any) -> tuple[ShardedFleet, list[RealDevice], dict[str, BrokerAddress]]:
        """As ``devices``, the simulated ones in ``processes`` children (``lab_shards.py``): built and enrolled,
        not connected; ``start`` them with the addresses returned."""
        sims = ShardedFleet(root / "sims", count, processes, self.controller_keys, package_keys, report_s=report_s,
                            **simulated)
        try:
            sims.build()
            real = real or {}
            addresses = self.enrol({**sims.labels(), **{d: labels for d, (labels, _) in real.items()}})
            return sims, self._start_real(root, real, addresses, package_keys, report_s), addresses
        except BaseException:
            with contextlib.suppress(FleetError):  # what went wrong first is the error to see
                sims.stop()
            raise

    def _start_real(self, root: Path, real: Mapping[str, tuple[Mapping[str, str], str]],
                    addresses: Mapping[str, BrokerAddress], package_keys: Path, report_s: float) -> list[RealDevice]:
        started: list[RealDevice] = []
        try:
            for device, (labels, hardware) in real.items():
                started.append(RealDevice(root / device, device, labels, hardware, addresses[device],
                                          self.controller_keys, package_keys, report_s=report_s).start())
        except BaseException:
            for each in started:
                each.stop()
            raise
        return started

    # --- releases -----------------------------------------------------------------------------
    def plan(self, raw: Mapping[str, Any], name: str | None = None) -> Path:
        path = self.root / "plans" / f"{name or raw['rollout']}.yaml"
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, yaml.safe_dump(dict(raw), sort_keys=False))
        sign_plan(path, self.release_key)
        return path

    def status(self, rollout: str) -> RolloutStatus:
        return rollout_status(self.store, rollout)

    async def until(self, rollout: str, condition: Callable[[RolloutStatus], bool], timeout_s: float,
                    what: str, poll_s: float = 0.05) -> RolloutStatus:
        """Polls the store until ``condition(status)``; FleetError with the rollout's record at the deadline, or
        at once if the controller process exited."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(rollout)
            if condition(status):
                return status
            exited = self.process is not None and self.process.poll() is not None
            if time.monotonic() > deadline or exited:
                history = "\n".join(line for _, line in status.history)
                why = f"the controller exited ({self.process.returncode})" if exited and self.process else \
                    f"not within {timeout_s:g} s"
                raise FleetError(f"{what}: {why}; {status.rollout.phase.value} {status.states}\n{history}\n"
                                 f"controller log: {self.controller_log}")
            await asyncio.sleep(poll_s)

    async def reported(self, model: str, version: int, ids: list[str], timeout_s: float, tolerate: int = 0,
                       check: Callable[[], None] | None = None) -> list[str]:
        """Polls the store until every one of ``ids`` has reported serving ``version`` of ``model``. At the deadline
        it returns those still missing when they are at most ``tolerate``, else raises FleetError naming them.
        ``check`` runs on every poll (a watchdog that raises)."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = self.store.views(model)
            missing = [d for d in ids if d not in views or views[d].served != version]
            if check is not None:
                check()
            if not missing:
                return []
            if time.monotonic() > deadline:
                if len(missing) > tolerate:
                    raise FleetError(f"{len(missing)} devices never reported serving v{version} within "
                                     f"{timeout_s:g} s: {', '.join(missing[:5])}")
                return missing
            await asyncio.sleep(0.2)

    def close(self) -> None:
        self.stop_controller()
        self.packages.close()
        self.broker.stop()
        self.store.close()
