"""The sample detector in tests: its ensemble on a real Triton, client traffic through it, its policy."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.daemons.watch import Watch
from orchestrator.sample.detector import ENSEMBLE, MODEL, golden_frames
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton

from .conftest import ADMIN_KEY, ROOT, Stack
from .watchkit import watching

DETECTOR_ENTRIES = ("detector_pre", MODEL, "detector_nms", ENSEMBLE)
OUTPUTS = ["BOXES", "SCORES", "CLASSES", "COUNT"]


def start_detector_stack(tmp: Path, trusted_key: Path | None = None, with_classifier: bool = False) -> Stack:
    """The detector's ensemble (and with ``with_classifier`` the sample classifier beside it) on a real Triton."""
    repository, state = tmp / "model_repository", tmp / "orchestrator_state"
    repository.mkdir()
    entries = DETECTOR_ENTRIES + (("classifier",) if with_classifier else ())
    for entry in entries:
        shutil.copytree(ROOT / "model_repository" / entry, repository / entry)
    state.mkdir()
    for model in (MODEL, "classifier") if with_classifier else (MODEL,):
        shutil.copytree(ROOT / "orchestrator_state" / model, state / model)
    if trusted_key is not None:
        (state / "trusted_keys").mkdir()
        shutil.copy(trusted_key, state / "trusted_keys" / trusted_key.name)
    server = EmbeddedTriton(repository, tmp / "triton", load_models=entries, admin_key=ADMIN_KEY)
    server.start()
    return Stack(server, repository, state, tmp)


def set_policy(stack: Stack, section: str, values: dict[str, Any]) -> None:
    path = stack.state / MODEL / "policy.yaml"
    policy = yaml.safe_load(path.read_text()) or {}
    policy[section] = {**(policy.get(section) or {}), **values}
    path.write_text(yaml.safe_dump(policy))


def watching_detector(stack: Stack, watch: dict[str, Any], models: tuple[str, ...] | None = (MODEL,)
                      ) -> AbstractContextManager[Watch]:
    """``watchkit.watching`` with the detector's policy, over the detector alone unless ``models`` says."""
    return watching(stack, watch, model=MODEL, models=list(models) if models else None)


@dataclass
class DetectionTraffic:
    """Client threads calling the ensemble by name, as cameras do, recording every answer."""

    url: str
    threads: int = 2
    period_s: float = 0.02
    answers: list[tuple[float, str]] = field(default_factory=list)  # (time sent, error or "")
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        client = Triton(self.url, timeout_s=10.0)
        frames = golden_frames()[:16]
        turn = 0
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    client.infer(ENSEMBLE, {"IMAGE": frames[turn % len(frames)][None]}, OUTPUTS)
                    error = ""
                except Exception as exc:  # every failure is data for the assertion
                    error = str(exc)
                turn += 1
                with self._lock:
                    self.answers.append((sent, error))
                time.sleep(max(0.0, sent + self.period_s - time.monotonic()))
        finally:
            client.close()

    def __enter__(self) -> DetectionTraffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)

    def failures(self) -> list[str]:
        return [error for _, error in self.answers if error]
