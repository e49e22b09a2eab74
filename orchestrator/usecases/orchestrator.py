"""``Orchestrator``: the use cases behind one object, for the CLI, the daemons and tests.

Each method is one use case module's function applied to this context; nothing is decided here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.journal import History
from orchestrator.delivery.trust import TrustPolicy
from orchestrator.settings import Settings
from orchestrator.triton.protocol import TritonAPI
from orchestrator.usecases.context import Context, ImportResult, SwitchResult

if TYPE_CHECKING:
    from orchestrator.store.pause import Pause
    from orchestrator.usecases.prune import PruneResult
    from orchestrator.usecases.status import ModelStatus, VersionDescription

# Each method imports its use case module: a command loads only the one it runs (`orchestrate
# history` needs neither the package checks of `import` nor the golden checks of `promote`).


class Orchestrator(Context):
    def __init__(self, settings: Settings, triton: TritonAPI | None = None, trust: TrustPolicy | None = None) -> None:
        built = Context.from_settings(settings, triton, trust)
        super().__init__(built.settings, built.triton, built.trust, built.repository, built.clock)

    def import_package(self, package: Path) -> ImportResult:
        from orchestrator.usecases import importing  # noqa: PLC0415

        return importing.import_package(self, package)

    def promote(self, model: str | None, version: int, force: bool = False, retry: bool = False) -> SwitchResult:
        from orchestrator.usecases import promote  # noqa: PLC0415

        return promote.promote(self, model, version, force, retry)

    def rollback(self, model: str | None, to: int | None = None, force: bool = False,
                 reason: str = "requested by operator", quarantine: bool = False,
                 evidence: dict[str, object] | None = None, judged: int | None = None) -> SwitchResult:
        from orchestrator.usecases import rollback  # noqa: PLC0415

        return rollback.rollback(self, model, to, force, reason, quarantine, evidence, judged)

    def reconcile(self, model: str | None = None) -> list[str]:
        from orchestrator.usecases import reconcile  # noqa: PLC0415

        return reconcile.reconcile(self, model)

    def history(self, model: str | None) -> History:
        from orchestrator.usecases import reconcile  # noqa: PLC0415

        return reconcile.history(self, model)

    def prune(self, model: str | None, keep: int | None = None, dry_run: bool = False) -> PruneResult:
        from orchestrator.usecases import prune  # noqa: PLC0415

        return prune.prune(self, model, keep, dry_run)

    def status(self, model: str | None) -> list[ModelStatus]:
        from orchestrator.usecases import status  # noqa: PLC0415

        return status.statuses(self, model)

    def describe(self, model: str | None, version: int) -> VersionDescription:
        from orchestrator.usecases import status  # noqa: PLC0415

        return status.describe(self, model, version)

    def resolve_version(self, model: str | None, text: str) -> int:
        """A version as typed: ``v2``, ``2`` or one of the model's labels (``stable``)."""
        from orchestrator.usecases import labels  # noqa: PLC0415

        return labels.resolve(self, model, text)

    def label(self, model: str | None, name: str, version: int) -> tuple[dict[str, int], bool]:
        from orchestrator.usecases import labels  # noqa: PLC0415

        return labels.set_label(self, model, name, version)

    def unlabel(self, model: str | None, name: str) -> int | None:
        from orchestrator.usecases import labels  # noqa: PLC0415

        return labels.remove_label(self, model, name)

    def pause(self, model: str | None, reason: str) -> tuple[Pause, bool]:
        from orchestrator.usecases import pause  # noqa: PLC0415

        return pause.pause(self, model, reason)

    def resume(self, model: str | None) -> Pause | None:
        from orchestrator.usecases import pause  # noqa: PLC0415

        return pause.resume(self, model)


__all__ = ["ImportResult", "Orchestrator", "SwitchResult"]
