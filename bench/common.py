"""What the benchmarks share: client threads under load, a private copy of the sample stack, percentiles."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from orchestrator.sample import golden_set
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton

ROOT = Path(__file__).resolve().parent.parent
MODEL = "classifier"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Answer:
    sent: float  # wall time
    ms: float
    version: int | None  # None: the request failed
    window: str


class Clients:
    """Client threads inferring continuously, each on its own connection; every answer is kept.

    ``images`` (swappable mid-run) are sent one per request in turn; ``window`` tags answers
    so alternating on/off windows can be compared. Over HTTP (``url``) unless a gRPC
    address (``host:port``) is given; ``failure_pause_s`` spaces a thread's retries after a
    failed request (a dead server refuses at once).
    """

    def __init__(self, url: str, threads: int, images: np.ndarray | None = None, grpc_address: str | None = None,
                 failure_pause_s: float = 0.0) -> None:
        self.url, self.images, self.window = url, images, "warmup"
        self.grpc_address, self.failure_pause_s = grpc_address, failure_pause_s
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _connect(self) -> tuple[Callable[[np.ndarray], int], Callable[[], None]]:
        """(send one image, answering the version that served it; close) on a new connection."""
        if self.grpc_address is None:
            http = Triton(self.url, timeout_s=10)
            return lambda image: http.infer(MODEL, {"IMAGE": image}, ["LOGITS"]).version, http.close
        grpc = grpcclient.InferenceServerClient(self.grpc_address)
        wanted = [grpcclient.InferRequestedOutput("LOGITS")]

        def send(image: np.ndarray) -> int:
            tensor = grpcclient.InferInput("IMAGE", list(image.shape), "FP32")
            tensor.set_data_from_numpy(image)
            result = grpc.infer(MODEL, [tensor], outputs=wanted, client_timeout=10)
            return int(result.get_response().model_version)

        return send, grpc.close

    def _run(self) -> None:
        send, close = self._connect()
        default, turn = golden_set()[0][:1], 0
        while not self.stop.is_set():
            images = default if self.images is None else self.images
            image, turn = images[turn % len(images)][None], turn + 1
            window, sent, started = self.window, time.time(), time.perf_counter()
            try:
                version: int | None = send(image)
            except Exception:  # every failure is a figure
                version = None
            with self.lock:
                self.answers.append(Answer(sent, (time.perf_counter() - started) * 1000.0, version, window))
            if version is None and self.failure_pause_s:
                time.sleep(self.failure_pause_s)
        close()

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.sent >= moment]

    def in_window(self, window: str) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.window == window and a.version is not None]

    def __enter__(self) -> Clients:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(15)


def sample_stack(work: Path, **server_options: object) -> tuple[Path, Path, EmbeddedTriton]:
    """A private copy of the sample repository and state, and an embedded Triton serving it (started)."""
    repository, state = work / "model_repository", work / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository)
    shutil.copytree(ROOT / "orchestrator_state", state)
    server = EmbeddedTriton(repository, work / "triton", load_models=(MODEL,), **server_options)  # type: ignore[arg-type]
    return repository, state, server.start()


def start_watcher(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """A real ``orchestrate watch`` process, its exporter on loopback, its log appended to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "watch", "--metrics-port", str(port),
                             "--metrics-address", "127.0.0.1"], env=env, stderr=log.open("a"))


def stop_watcher(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, resident bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return cpu, rss_pages * os.sysconf("SC_PAGE_SIZE")


def measure(pid: int, seconds: float) -> tuple[float, float]:
    """(% of one core, MiB resident) of a process over the next ``seconds``."""
    cpu0, _ = process_usage(pid)
    time.sleep(seconds)
    cpu1, rss = process_usage(pid)
    return (cpu1 - cpu0) / seconds * 100.0, rss / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, seconds: list[float]) -> str:
    if not seconds:
        return f"  {name:<11} no data"
    return (f"  {name:<11} p50 {pct(seconds, 0.5) * 1000:7.0f} ms  p95 {pct(seconds, 0.95) * 1000:7.0f} ms  "
            f"max {max(seconds) * 1000:7.0f} ms  mean {np.mean(seconds) * 1000:7.0f} ms")
