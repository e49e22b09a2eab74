"""What to do about an operation a crash interrupted: a pure decision over what the disk shows.

Every mutating command records ``started`` before it acts; a ``started`` with no final
record is what the next command repairs. The disk is the truth: a switch whose policy was
written is completed, one whose policy was not is undone; an import either filed its folder
or left nothing. ``usecases/repair.py`` applies the decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator.core.journal import Action, Record
from orchestrator.core.model import VersionStatus


class RepairKind(enum.Enum):
    IMPORT_FILED = "import_filed"  # the folder was renamed in: record the import as done
    IMPORT_LOST = "import_lost"  # interrupted before filing: nothing to undo
    CLOSE = "close"  # nothing on disk to repair: close the record
    COMPLETE_SWITCH = "complete_switch"  # the policy serving the target was written: finish the plan
    UNDO_SWITCH = "undo_switch"  # interrupted before the switch: the versions resident before return


@dataclass(frozen=True)
class RepairDecision:
    kind: RepairKind
    started: Record
    restore: tuple[int, ...] = ()  # UNDO_SWITCH: the policy to write back (empty: leave the policy)
    mark_rolled_back: int | None = None  # COMPLETE_SWITCH of a rollback: the version rolled back from
    quarantine: bool = False

    @property
    def switched(self) -> bool:
        return self.kind is RepairKind.COMPLETE_SWITCH


def decide_repair(started: Record, *, filed: bool, served: int | None, target_status: VersionStatus | None,
                  resident: tuple[int, ...]) -> RepairDecision:
    """``filed``: the import's target folder exists; ``served``/``resident``: what the disk's policy says now;
    ``target_status``: the switch target's verification (None when it has no readable meta)."""
    action, target = started.action, started.to_version
    if action is Action.IMPORT:
        return RepairDecision(RepairKind.IMPORT_FILED if target is not None and filed else RepairKind.IMPORT_LOST,
                              started)
    if not action.switches or target is None:
        return RepairDecision(RepairKind.CLOSE, started)
    # A promote counts as switched only once its target was verified: the policy may name the
    # target before that only if someone else wrote it.
    if served == target and (action is Action.ROLLBACK or target_status is VersionStatus.VERIFIED):
        rolled_back = started.from_version if action is Action.ROLLBACK else None
        return RepairDecision(RepairKind.COMPLETE_SWITCH, started, mark_rolled_back=rolled_back,
                              quarantine=bool(started.details.get("quarantine")))
    before = tuple(int(v) for v in started.details.get("resident_before", []))
    return RepairDecision(RepairKind.UNDO_SWITCH, started, restore=before if before and before != resident else ())
