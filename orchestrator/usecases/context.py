"""What every use case works with: settings, the model store, a Triton, the trust policy.

Built once per command (``Context.from_settings``) or handed in by a test (a ``TritonTwin``
instead of a server). The use cases are plain functions of a context, one module each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from orchestrator.core.journal import Action, Record, Result, now_iso
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.errors import UsageError
from orchestrator.settings import Settings
from orchestrator.store import meminfo
from orchestrator.store.backlog import WriteBacklog
from orchestrator.store.lock import model_lock
from orchestrator.store.repository import ModelRepository, ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.client import Triton
from orchestrator.triton.protocol import TritonAPI

T = TypeVar("T")


@dataclass(frozen=True)
class SwitchResult:
    model: str
    action: str
    from_version: int | None
    to_version: int
    resident: tuple[int, ...]
    duration_ms: float  # the whole command
    changed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    switch_ms: float = 0.0  # command start until the target served


@dataclass(frozen=True)
class ImportResult:
    model: str
    version: int
    artifacts: dict[str, str]


@dataclass
class Context:
    settings: Settings
    triton: TritonAPI
    trust: TrustPolicy
    repository: ModelRepository
    clock: Callable[[], float] = time.monotonic
    # Told each step of a long command as it starts (the CLI prints them on a terminal); silent by default.
    progress: Callable[[str], None] = field(default=lambda step: None)
    # What memory the device has left, in bytes (None: unknown); the twin's tests give a device's figures.
    mem_available: Callable[[], int | None] = meminfo.mem_available
    # The watcher's: journal records and marks the disk refuses are written later, so that a full disk
    # does not stop a rollback. None (commands): such a write fails the command.
    backlog: WriteBacklog | None = None

    @classmethod
    def from_settings(cls, settings: Settings, triton: TritonAPI | None = None,
                      trust: TrustPolicy | None = None) -> Context:
        assert settings.state_dir is not None  # Settings fills it in
        if triton is None:
            # Opens no connection until its first call, imports tritonclient on its first inference only.
            triton = Triton(settings.triton_url, settings.admin_key, settings.timeout_s,  # type: ignore[assignment]
                            settings.load_timeout_s)
        return cls(settings, triton, trust or TrustPolicy.from_environment(settings.state_dir),
                   ModelRepository(settings.repository, settings.state_dir))

    def resolve_model(self, model: str | None) -> str:
        if model:
            return model
        if self.settings.default_model:
            return self.settings.default_model
        models = self.repository.models()
        if len(models) == 1:
            return models[0]
        raise UsageError(f"name the model: the repository holds {', '.join(models) or 'no models'}")

    def store(self, model: str | None) -> ModelStore:
        return self.repository.model(self.resolve_model(model))

    @contextmanager
    def locked(self, store: ModelStore) -> Iterator[None]:
        with model_lock(store.state, store.name, self.settings.lock_timeout_s):
            yield

    def record(self, store: ModelStore, snapshot: ModelSnapshot, action: Action, result: Result, op: str,
               **fields: Any) -> ModelSnapshot:
        record = Record(action=action, result=result, op=op, actor=self.settings.actor, **fields)
        if self.backlog is None:
            return store.record(snapshot, record)

        def late() -> None:  # the record keeps its time; the line says when it reached the disk
            store.journal.append(replace(record, details={**record.details, "written_late_at": now_iso()}))

        self.backlog.attempt(f"{store.name}'s journal record ({action.value} {result.value})",
                             lambda: store.journal.append(record), late)
        return snapshot.recorded(record)

    def write_or_keep(self, what: str, write: Callable[[], T]) -> T | None:
        """``write()``; with a backlog, None when the disk refused it and it waits to be written later."""
        if self.backlog is None:
            return write()
        return self.backlog.attempt(what, write)

    def ms_since(self, started: float) -> float:
        return round((self.clock() - started) * 1000.0, 2)
