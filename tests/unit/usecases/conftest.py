"""The use cases and the watcher on the in-memory Triton twin, over a real repository copy on disk.

Each test gets its own copy of ``model_repository/`` and ``orchestrator_state/``, a ``TritonTwin``
whose versions run their own ``model.onnx`` with onnxruntime (as ``orchestrator/sample/model.py``
does on Triton's python backend), and an ``Orchestrator`` on it. Time is a ``VirtualClock``, so
nothing sleeps. A crash at a fault point is a ``Crash`` (a BaseException) raised in-process, with the
cleanup a SIGKILL would skip skipped too (``Env.crash_at``).
"""

from __future__ import annotations

import hashlib
import shutil
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from prometheus_client import CollectorRegistry

from orchestrator import faults
from orchestrator.core.journal import Record
from orchestrator.core.policy import parse_watch_policy
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.watcher import ModelWatcher
from orchestrator.sample import INPUT, OUTPUT, Variant, golden_set
from orchestrator.settings import Settings
from orchestrator.store import repository as repository_module
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.triton import metrics as triton_metrics
from orchestrator.triton.protocol import TritonState
from orchestrator.triton.twin import Behaviour, TritonTwin, VirtualClock
from orchestrator.usecases import candidate as candidate_module
from orchestrator.usecases.orchestrator import Orchestrator
from tests.conftest import BuildKey, classifier_only

ROOT = Path(__file__).resolve().parents[3]
MODEL = "classifier"
CANDIDATE = candidate_name(MODEL)
ADMIN_KEY = "unit-admin-key-0123456789"
NOWHERE = "http://127.0.0.1:9/metrics"  # nothing listens there
IMAGES, LABELS = golden_set()

_SESSIONS: dict[str, ort.InferenceSession] = {}


class Crash(BaseException):
    """The process died at a fault point (the real runs SIGKILL themselves there)."""


def onnx_session(path: Path) -> ort.InferenceSession:
    """One onnxruntime session per distinct network (a load fails on a file onnxruntime cannot read)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuntimeError(f"cannot read {path.name}: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _SESSIONS[digest] = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[digest]


@dataclass
class Backends:
    """The twin's ``behaviour_for``: what sample/model.py does in initialize() and execute().

    ``loads`` lists every instance started ((model, version), in order): a version absent from it
    was never (re)loaded. ``turn_bad`` makes a running instance answer differently from now on,
    like ``orchestrator/sample/faulty_model.py`` does after its first requests.
    """

    loads: list[tuple[str, int]] = field(default_factory=list)
    turned: dict[tuple[str, int], Behaviour] = field(default_factory=dict)

    def __call__(self, model: str, version: int, folder: Path | None) -> Behaviour:
        if folder is None:
            raise RuntimeError("no version folder")
        session = onnx_session(folder / "model.onnx")
        self.loads.append((model, version))

        def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            bad = self.turned.get((model, version))
            if bad is not None:
                return bad(inputs)
            return {OUTPUT: session.run([OUTPUT], {INPUT: inputs[INPUT]})[0]}

        return execute

    def turn_bad(self, model: str, version: int, behaviour: Behaviour) -> None:
        self.turned[(model, version)] = behaviour


def nan_logits(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {OUTPUT: np.full((len(inputs[INPUT]), 10), np.nan, np.float32)}


@dataclass
class Env:
    tmp: Path
    repository: Path
    state: Path
    clock: VirtualClock
    backends: Backends
    twin: TritonTwin
    packages: dict[Variant, Path]
    build_key: BuildKey
    monkeypatch: pytest.MonkeyPatch
    scrapes: list[str] = field(default_factory=list)

    # --- building ---------------------------------------------------------------------
    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"repository": self.repository, "state_dir": self.state,
                                  "triton_url": self.twin.url, "actor": "pytest", "admin_key": ADMIN_KEY,
                                  "timeout_s": 5.0, "lock_timeout_s": 0.5}
        values.update(overrides)
        return Settings(**values)

    def orchestrator(self, **overrides: Any) -> Orchestrator:
        """A fresh command's orchestrator; its Triton client sends the settings' admin key."""
        settings = self.settings(**overrides)
        return Orchestrator(settings, triton=self.twin.with_key(settings.admin_key))

    def make_twin(self, load_models: tuple[str, ...] = (MODEL,), **options: Any) -> TritonTwin:
        return TritonTwin("unit", repository=self.repository, admin_key=ADMIN_KEY, key=ADMIN_KEY,
                          load_models=load_models, clock=self.clock, sleep=self.clock.sleep,
                          behaviour_for=self.backends, **options)

    def store(self) -> ModelStore:
        return ModelStore(self.repository / MODEL, self.state / MODEL)

    def set_policy(self, section: str, **values: Any) -> None:
        """Change settings of one section of the model's policy.yaml (the test's copy)."""
        path = self.state / MODEL / "policy.yaml"
        policy = yaml.safe_load(path.read_text()) or {}
        policy.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(policy))

    def watcher(self, watch: dict[str, Any] | None = None, sharers: int = 1,
                **settings: Any) -> tuple[ModelWatcher, CollectorRegistry]:
        """A watcher as ``orchestrate watch`` builds one (actor "watch", short lock wait), on the twin, with
        grace_s 0 and the virtual clock. Triton's /metrics is never reachable: the scrape answers None, as
        ``metrics.scrape`` does on a refused connection, without a socket (``scrapes`` counts the tries)."""
        registry = CollectorRegistry()
        policy = parse_watch_policy({"grace_s": 0, **(watch or {})})

        def scrape(url: str, timeout_s: float) -> triton_metrics.Snapshot | None:
            self.scrapes.append(url)
            return None

        self.monkeypatch.setattr(triton_metrics, "scrape", scrape)
        ctx = self.orchestrator(**{"actor": "watch", "lock_timeout_s": 0.5, **settings})
        watcher = ModelWatcher(ctx, self.store(), policy, WatchMetrics(registry), NOWHERE, clock=self.clock,
                               triton=self.twin.with_key(ADMIN_KEY), sharers=sharers)
        return watcher, registry

    def ticks(self, watcher: ModelWatcher, count: int) -> list[list[str]]:
        """``count`` checks one interval apart; the rules of the anomalies each raised."""
        raised = []
        for _ in range(count):
            raised.append([anomaly.rule for anomaly in watcher.tick()])
            self.clock.sleep(watcher.policy.interval_s)
        return raised

    # --- acting -----------------------------------------------------------------------
    def import_(self, variant: Variant = Variant.BETTER) -> int:
        return self.orchestrator().import_package(self.packages[variant]).version

    def promote_better(self) -> None:
        """v2 (the better sample) imported and promoted: serving v2, v1 resident as the fallback."""
        assert self.import_() == 2
        assert self.orchestrator().promote(MODEL, 2).changed

    @contextmanager
    def crash_at(self, point: str) -> Iterator[None]:
        """The command inside dies at ``point``: the checkpoint raises Crash, and the cleanup that a
        SIGKILL never runs (the candidate entry's unload, the import staging's removal) is skipped
        while Crash unwinds. The with-block must raise Crash."""
        dead = False
        drop = candidate_module.drop_candidate
        rmtree = shutil.rmtree

        def checkpoint(name: str) -> None:
            nonlocal dead
            if name == point:
                dead = True
                raise Crash(point)

        def drop_candidate(*args: Any, **kwargs: Any) -> None:
            if not dead:
                drop(*args, **kwargs)

        def remove(path: Any, *args: Any, **kwargs: Any) -> None:
            if not dead:
                rmtree(path, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(faults, "checkpoint", checkpoint)
            patch.setattr(candidate_module, "drop_candidate", drop_candidate)
            patch.setattr(repository_module, "shutil", types.SimpleNamespace(rmtree=remove,
                                                                             copyfile=shutil.copyfile))
            with pytest.raises(Crash):
                yield
        assert dead, f"{point} was never reached"

    # --- looking ----------------------------------------------------------------------
    def served_by_twin(self) -> int:
        """The version that answers a request naming no version, as a client sees it."""
        return self.twin.infer(MODEL, {INPUT: IMAGES[:1]}, [OUTPUT]).version

    def states(self, model: str = MODEL) -> dict[int, str]:
        return {v: e.state.value for v, e in self.twin.states(model).items()}

    def ready(self, model: str = MODEL) -> set[int]:
        return {v for v, e in self.twin.states(model).items() if e.state is TritonState.READY}

    def records(self) -> tuple[Record, ...]:
        return self.store().journal.read().records

    def outcomes(self, action: str) -> list[str]:
        """The results of ``action``'s records, in order (steps named by their step)."""
        return [str(r.details["step"]) if r.result == "step" else r.result.value
                for r in self.records() if r.action == action]

    def last(self, action: str | None = None) -> Record:
        return [r for r in self.records() if action is None or r.action == action][-1]

    def status(self, version: int) -> str:
        return self.store().status(version).value

    def files(self) -> dict[str, bytes]:
        """Every file of the repository and the state folder (the lock file aside)."""
        found = {}
        for base in (self.repository, self.state):
            for path in sorted(base.rglob("*")):
                if path.is_file() and path.name != ".orchestrator.lock":
                    found[str(path.relative_to(self.tmp))] = path.read_bytes()
        return found

    def assert_consistent(self, served: int, versions: list[int]) -> None:
        """Disk and twin agree, ``served`` answers, and nothing half-done is left."""
        store = self.store()
        assert store.versions() == versions
        assert store.served() == served
        assert self.ready() == set(store.resident())
        assert self.served_by_twin() == served
        assert not (self.repository / CANDIDATE).exists()
        assert self.states(CANDIDATE) == {}
        assert store.staging_leftovers() == []
        history = store.journal.read()
        assert history.unfinished() is None and history.problems == ()


@pytest.fixture
def env(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
        monkeypatch: pytest.MonkeyPatch) -> Env:
    for name in (faults.ENV, faults.ENV_WRITE, "ORCH_TRUSTED_KEYS", "ORCH_ALLOW_UNSIGNED"):
        monkeypatch.delenv(name, raising=False)
    repository, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    (state / "trusted_keys").mkdir()
    shutil.copy(build_key.public, state / "trusted_keys" / build_key.public.name)
    clock = VirtualClock()
    backends = Backends()
    built = Env(tmp_path, repository, state, clock, backends, None, packages, build_key,  # type: ignore[arg-type]
                monkeypatch)
    built.twin = built.make_twin()
    return built


