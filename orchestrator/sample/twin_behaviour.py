"""The sample's packages on the in-memory Triton twin: ``TritonTwin(behaviour_for=SampleBackend(...))``.

What ``model.py`` and ``faulty_model.py`` do on Triton's python backend, done in this process: a
version's load (``initialize()``) opens its ``model.onnx`` with onnxruntime and reads its
``fault.json`` if it has one; each request runs the network, and a faulty version misbehaves after
``after_requests`` requests exactly as ``faulty_model.py`` does (nan, zeros, exploding, divergent,
slow, errors, crash, drift; the first bad response's wall time written to ``mark``).

Built for thousands of twins in one process:

* one onnxruntime session per distinct network (the sha256 of ``model.onnx``), shared by every
  device and version through ``Sessions`` (onnxruntime's ``run`` is thread-safe);
* requests are counted per loaded instance, as the real runner counts per stub process: per device
  and version, and a reload (the candidate entry of a promote, a restart) starts again from 0;
* ``only_on`` is compared with the simulated device's environment given to ``SampleBackend``
  (``hardware=`` sets ``ORCH_SAMPLE_HARDWARE``), never with this process's.

A crash cannot kill a process that does not exist: from the crashing request on, every request of
that instance fails as a dead stub's do (use ``TritonTwin.crash`` to model its unload never ending).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.sample import FAULTS, HARDWARE_ENV
from orchestrator.triton.twin import Behaviour

FAULT_FILE = "fault.json"
NETWORK_FILE = "model.onnx"
SLOW_S = 0.05  # what faulty_model.py sleeps per bad request
DEAD_STUB = "Stub process is not healthy."

if TYPE_CHECKING:  # onnxruntime itself is imported by the first load
    import onnxruntime as ort


class Sessions:
    """onnxruntime sessions by the sha256 of their network: one per distinct ``model.onnx``, whoever loads it."""

    def __init__(self) -> None:
        self._by_digest: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_digest)

    def session(self, path: Path) -> ort.InferenceSession:
        """The session for the network in ``path``; a file onnxruntime cannot read fails, as the load would."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"cannot read {path.name}: {exc.strerror}") from exc
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:  # held while a new session is built: a fleet's first loads build it once
            found = self._by_digest.get(digest)
            if found is None:
                import onnxruntime as ort  # noqa: PLC0415 - only the sample tooling needs it

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                found = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
                self._by_digest[digest] = found
            return found


SHARED_SESSIONS = Sessions()


@dataclass(frozen=True)
class Fault:
    """A version's ``fault.json``, as ``faulty_model.py`` reads it."""

    mode: str
    after_requests: int
    mark: Path | None = None
    bright_above: float = 0.8
    only_on_env: str | None = None
    only_on_values: tuple[str, ...] = ()

    @classmethod
    def read(cls, folder: Path) -> Fault | None:
        """The fault of the version in ``folder``; None for a good version (no fault.json)."""
        path = folder / FAULT_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if raw["mode"] not in FAULTS:
            raise RuntimeError(f"{FAULT_FILE}: unknown fault {raw['mode']!r}")
        only_on = raw.get("only_on") or {}
        return cls(mode=raw["mode"], after_requests=int(raw["after_requests"]),
                   mark=Path(raw["mark"]) if raw.get("mark") else None,
                   bright_above=float(raw.get("bright_above", 0.8)), only_on_env=only_on.get("env"),
                   only_on_values=tuple(only_on.get("values", ())))

    def active_in(self, environ: Mapping[str, str]) -> bool:
        """Whether the fault applies to a backend whose process has ``environ``."""
        return self.only_on_env is None or environ.get(self.only_on_env, "") in self.only_on_values


class _Instance:
    """One loaded version on one device: its session, its fault and its own request count."""

    def __init__(self, session: ort.InferenceSession, fault: Fault | None, sleep: Callable[[float], None],
                 wall_clock: Callable[[], float]) -> None:
        self.session, self.fault, self.sleep, self.wall_clock = session, fault, sleep, wall_clock
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.served = 0
        self.dead = False
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.dead:
            raise RuntimeError(DEAD_STUB)
        feeds = {name: inputs[name] for name in self.inputs}
        results = list(self.session.run(self.outputs, feeds))
        with self.lock:
            self.served += 1
            bad = self.fault is not None and self.served > self.fault.after_requests
        if bad:
            results = self._bad(results, feeds)
        return dict(zip(self.outputs, results, strict=True))

    def _bad(self, results: list[np.ndarray], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """faulty_model.py's ``_bad``, step for step."""
        fault = self.fault
        assert fault is not None
        if fault.mode == "drift":
            images = feeds[self.inputs[0]]
            bright = images.reshape(len(images), -1).mean(axis=1) > fault.bright_above
            if not bright.any():
                return results
            out = results[0].copy()
            out[bright, 0] = out[bright].max(axis=1) + 5.0
            results = [out, *results[1:]]
        self._mark()
        if fault.mode == "crash":
            self.dead = True
            raise RuntimeError(DEAD_STUB)
        if fault.mode == "slow":
            self.sleep(SLOW_S)
            return results
        if fault.mode == "errors":
            raise RuntimeError("injected fault: backend error")
        out = results[0]
        if fault.mode == "drift":
            return results
        if fault.mode == "nan":
            out = np.full_like(out, np.nan)
        elif fault.mode == "zeros":
            out = np.zeros_like(out)
        elif fault.mode == "exploding":
            out = out * np.float32(1e12)
        elif fault.mode == "divergent":
            out = np.roll(out, 3, axis=-1)
        return [out, *results[1:]]

    def _mark(self) -> None:
        mark = self.fault.mark if self.fault else None
        if mark is not None and not mark.exists():
            mark.write_text(repr(self.wall_clock()))


class SampleBackend:
    """A ``BehaviourFactory`` for ``TritonTwin``: one simulated device's python backend running the sample.

    ``hardware`` is the device's ``ORCH_SAMPLE_HARDWARE`` (``environ``: the rest of its backend's
    environment); ``sleep`` is what a slow request waits on (the twin's clock for a virtual one).
    ``loads`` counts the instances started, by (model, version).
    """

    def __init__(self, hardware: str = "", environ: Mapping[str, str] | None = None,
                 sessions: Sessions = SHARED_SESSIONS, sleep: Callable[[float], None] = time.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.environ = {**(environ or {}), **({HARDWARE_ENV: hardware} if hardware else {})}
        self.sessions, self.sleep, self.wall_clock = sessions, sleep, wall_clock
        self.loads: dict[tuple[str, int], int] = {}

    @property
    def hardware(self) -> str:
        return self.environ.get(HARDWARE_ENV, "")

    def __call__(self, model: str, version: int, folder: Path | None) -> Behaviour:
        """The version's initialize(): an exception fails its load, as on Triton."""
        if folder is None:
            raise RuntimeError(f"{model} v{version}: no version folder")
        session = self.sessions.session(folder / NETWORK_FILE)
        fault = Fault.read(folder)
        self.loads[(model, version)] = self.loads.get((model, version), 0) + 1
        active = fault if fault is not None and fault.active_in(self.environ) else None
        return _Instance(session, active, self.sleep, self.wall_clock)
