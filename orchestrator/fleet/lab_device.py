"""A real device for the fleet lab: its own embedded Triton serving the real sample classifier, and
``orchestrate watch --fleet`` beside it (the watcher and the fleet agent, as on a Jetson), with
client traffic that must never see a failed request.

The device's hardware reaches the sample's fault packages through ``ORCH_SAMPLE_HARDWARE`` in
Triton's environment (a package built to misbehave on one hardware only does so there), as the
device's facts reach the controller through its fleet configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from orchestrator.fleet.broker import free_port
from orchestrator.fleet.transport import BrokerAddress
from orchestrator.sample import INPUT, OUTPUT, golden_set
from orchestrator.store.atomic import write_atomic
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton

MODEL = "classifier"
HARDWARE_ENV = "ORCH_SAMPLE_HARDWARE"
SAMPLE = Path(__file__).resolve().parents[2]


def _only(model: str):  # type: ignore[no-untyped-def]
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder).name in ("model_repository", "orchestrator_state")
        return [n for n in names if top and n != model and (Path(folder) / n).is_dir()]
    return ignore


def terminate(process: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM, and SIGKILL after ``grace_s`` if it has not exited by then."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Traffic:
    """One client thread inferring every ``period_s``; every answer kept as (time, version or None, error)."""

    def __init__(self, url: str, period_s: float = 0.02) -> None:
        self.url, self.period_s = url, period_s
        self.answers: list[tuple[float, int | None, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = Triton(self.url, timeout_s=10.0)
        image = golden_set()[0][:1]
        while not self.stop.is_set():
            sent = time.time()
            try:
                version: int | None = client.infer(MODEL, {INPUT: image}, [OUTPUT]).version
                error = ""
            except Exception as exc:  # every failure is a figure
                version, error = None, " ".join(str(exc).split())
            self.answers.append((sent, version, error))
            self.stop.wait(self.period_s)
        client.close()

    def failures(self) -> list[tuple[float, int | None, str]]:
        return [a for a in self.answers if a[1] is None]

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


class RealDevice:
    def __init__(self, root: Path, device: str, labels: Mapping[str, str], hardware: str, address: BrokerAddress,
                 controller_keys: Path, package_keys: Path, report_s: float = 1.0) -> None:
        self.root, self.device, self.labels, self.hardware = root, device, dict(labels), hardware
        root.mkdir(parents=True, exist_ok=True)
        self.repository, self.state = root / "model_repository", root / "orchestrator_state"
        if not self.repository.exists():
            shutil.copytree(SAMPLE / "model_repository", self.repository, ignore=_only(MODEL))
            shutil.copytree(SAMPLE / "orchestrator_state", self.state, ignore=_only(MODEL))
            shutil.copytree(package_keys, self.state / "trusted_keys")
        password_file = root / "mqtt.pass"
        write_atomic(password_file, (address.password or "") + "\n")
        self.config = root / "fleet.yaml"
        write_atomic(self.config, yaml.safe_dump({
            "device": device, "controller_keys": str(controller_keys), "labels": self.labels,
            "facts": {"hardware": hardware}, "models": [MODEL], "report_s": report_s, "resend_s": 1.0,
            "broker": {"host": address.host, "port": address.port, "username": address.username,
                       "password_file": str(password_file)}}))
        self.server = EmbeddedTriton(self.repository, root / "triton", load_models=(MODEL,),
                                     env={HARDWARE_ENV: hardware})
        self.process: subprocess.Popen[bytes] | None = None
        self.traffic: Traffic | None = None
        self.log = root / "watch.log"

    def start(self) -> RealDevice:
        if self.server.process is None or self.server.process.poll() is not None:
            self.server.start()
        self.start_agent()
        return self

    def start_agent(self) -> None:
        env = {**os.environ, "ORCH_REPOSITORY": str(self.repository), "ORCH_STATE_DIR": str(self.state),
               "ORCH_TRITON_URL": self.server.url}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "orchestrator", "watch", "--fleet", str(self.config),
                                             "--metrics-port", str(free_port())], stdout=log, stderr=log, env=env)

    def kill_agent(self) -> None:
        """Offline: SIGKILL (the broker publishes its last will); Triton keeps serving."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def start_traffic(self) -> Traffic:
        self.traffic = Traffic(self.server.url).start()
        return self.traffic

    def served(self) -> int | None:
        client = Triton(self.server.url, timeout_s=5.0)
        try:
            return client.infer(MODEL, {INPUT: golden_set()[0][:1]}, [OUTPUT]).version
        finally:
            client.close()

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
        terminate(self.process)
        self.server.stop()
