"""A real tritonserver per test, on a private copy of the sample repository.

The embedded server starts in well under a second (auto-complete disabled), so each
test gets its own server and repository and no test can see another's state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from orchestrator.sample import golden_set
from orchestrator.settings import Settings
from orchestrator.store.repository import ModelStore
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton
from orchestrator.usecases.orchestrator import Orchestrator
from tests.conftest import classifier_only

ROOT = Path(__file__).resolve().parents[2]
MODEL = "classifier"
# Every test server locks its model-repository API, as the Jetson compose file does.
ADMIN_KEY = "test-admin-key-0123456789"


@dataclass
class Stack:
    server: EmbeddedTriton
    repository: Path
    state: Path
    tmp: Path

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {"repository": self.repository, "state_dir": self.state,
                                     "triton_url": self.server.url, "actor": "pytest", "timeout_s": 10.0,
                                     "admin_key": ADMIN_KEY}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def orchestrator(self, **overrides: object) -> Orchestrator:
        return Orchestrator(self.settings(**overrides))

    def store(self) -> ModelStore:
        return ModelStore(self.repository / MODEL, self.state / MODEL)

    def triton(self) -> Triton:
        return Triton(self.server.url, ADMIN_KEY)

    def restart(self, load_models: tuple[str, ...] = (MODEL,)) -> None:
        """Kill the server like a power cut and start a new one on the same ports and repository."""
        ports = (self.server.http_port, self.server.grpc_port, self.server.metrics_port)
        self.server.kill()
        self.server = EmbeddedTriton(self.repository, self.tmp / "triton", load_models=load_models, ports=ports,
                                     admin_key=ADMIN_KEY).start()

    def env(self) -> dict[str, str]:
        return dict(os.environ, ORCH_REPOSITORY=str(self.repository), ORCH_STATE_DIR=str(self.state),
                    ORCH_TRITON_URL=self.server.url, ORCH_ACTOR="pytest", ORCH_ADMIN_KEY=ADMIN_KEY)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env or self.env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def served_by_triton(self) -> int:
        """The version that answers a request naming no version, as a client sees it."""
        client = self.triton()
        try:
            return client.infer(MODEL, {"IMAGE": golden_set()[0][:1]}, ["LOGITS"]).version
        finally:
            client.close()

    def snapshot(self) -> dict[str, bytes]:
        """Every file of the repository and the state folder, to prove nothing changed."""
        files = {}
        for base in (self.repository, self.state):
            for path in sorted(base.rglob("*")):
                if path.is_file() and path.name != ".orchestrator.lock":
                    files[str(path.relative_to(self.tmp))] = path.read_bytes()
        return files


def start_stack(tmp: Path, trusted_key: Path | None = None) -> Stack:
    repository, state = tmp / "model_repository", tmp / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    if trusted_key is not None:
        (state / "trusted_keys").mkdir()
        shutil.copy(trusted_key, state / "trusted_keys" / trusted_key.name)
    server = EmbeddedTriton(repository, tmp / "triton", load_models=(MODEL,), admin_key=ADMIN_KEY)
    server.start()
    return Stack(server, repository, state, tmp)


@pytest.fixture
def stack(tmp_path: Path, build_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    running = start_stack(tmp_path, build_key.public)
    try:
        yield running
    except BaseException:
        print(f"--- tritonserver log tail ---\n{running.server.log_tail()}")
        raise
    finally:
        running.server.kill()  # throwaway: a clean SIGINT stop takes 3 s (Triton polls its shutdown each second)


@dataclass
class Traffic:
    """Client threads inferring continuously, each with its own connection, recording every answer."""

    url: str
    threads: int = 4
    images: np.ndarray | None = None  # sent one per request, in turn; may be swapped mid-run (default: one image)
    # Each thread sends at most one request per period: dense enough that a gap of a few ms in
    # serving fails a request, without starving the orchestrator under test of the 2 cores, and
    # fewer traced requests in the shadow and drift tests (Triton 2.51 corrupts its heap under
    # tracing at full speed now and then: README, "Shadow traffic").
    period_s: float = 0.01
    answers: list[tuple[float, int | None, str]] = field(default_factory=list)  # (time, version, error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        client = Triton(self.url, timeout_s=10.0)
        default = golden_set()[0][:1]
        turn = 0
        try:
            while not self._stop.is_set():
                images = default if self.images is None else self.images
                image = images[turn % len(images)][None]
                turn += 1
                sent = time.monotonic()
                try:
                    version: int | None = client.infer(MODEL, {"IMAGE": image}, ["LOGITS"]).version
                    error = ""
                except Exception as exc:  # every failure is data for the assertion
                    version, error = None, str(exc)
                with self._lock:
                    self.answers.append((sent, version, error))
                time.sleep(max(0.0, sent + self.period_s - time.monotonic()))
        finally:
            client.close()

    def __enter__(self) -> Traffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        for worker in self._workers:
            worker.join(15)

    def failures(self) -> list[str]:
        return [error for _, _, error in self.answers if error]

    def versions_sent_after(self, moment: float) -> set[int | None]:
        return {version for sent, version, _ in self.answers if sent >= moment}


# Triton 2.51 never finishes unloading a version whose python stub crashed (measured: still
# UNLOADING after 60 s), so a command that waits for it waits its whole timeout. A test whose
# candidate's stub crashes waits this long instead of the usual 10 s; the product logs the hung
# unload and goes on (the watcher's own rollbacks wait 1 s at most).
CRASHED_STUB_WAIT_S = 2.0


def stub_pids(repository: Path, model: str | None = None) -> dict[str, int]:
    """model.py path -> pid of its python stub: a changed pid means Triton reloaded that version. With `model`,
    that entry's stubs only: a candidate entry's stub exits on its own time after its entry is unloaded."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        if len(args) > 1 and args[0].endswith(b"triton_python_backend_stub") and str(repository).encode() in args[1]:
            if model is None or f"/{model}/".encode() in args[1]:
                pids[args[1].decode()] = int(proc.name)
    return pids


def golden_batch() -> np.ndarray:
    return golden_set()[0][:4]
