"""Retention: which filed versions keep their artifacts and which may be pruned, as a pure decision.

Kept, whatever their number: the served version, every resident one (Triton loads it), the last
verified one (the rollback target), any version Triton still holds files of, any version an unfinished
journal operation names, and the version a shadow run or the candidate entry uses; then the ``keep``
newest by number. Since ``keep >= 1``, the highest filed version is always kept: numbering goes on
from it (``ModelStore.next_version``), so a pruned number is never filed again.

Everything else may be pruned, whatever its verification: a failed or quarantined version is
never promoted again without --force, and its evidence (meta.yaml, the checksums of what was
removed, its attestation, the journal) outlives its artifacts. ``usecases/prune.py`` applies this.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.core.journal import Record


class KeepReason(str, enum.Enum):
    SERVED = "served"
    RESIDENT = "resident"
    LAST_VERIFIED = "last verified"  # the rollback target
    LOADED = "held by Triton"  # READY, LOADING or UNLOADING: Triton may still read its folder
    OPEN_OPERATION = "named by an unfinished operation"
    CANDIDATE = "under test"  # a shadow run's version, or the candidate entry's
    NEWEST = "newest"  # among the ``keep`` highest numbers


@dataclass(frozen=True)
class Kept:
    version: int
    reasons: tuple[KeepReason, ...]

    def describe(self) -> str:
        return ", ".join(r.value for r in self.reasons)


@dataclass(frozen=True)
class Retention:
    keep: int
    kept: tuple[Kept, ...]  # highest first
    prunable: tuple[int, ...]  # lowest first: the order they are pruned in

    def reasons(self, version: int) -> tuple[KeepReason, ...]:
        return next((k.reasons for k in self.kept if k.version == version), ())


def decide_retention(versions: Iterable[int], *, keep: int, served: int | None, resident: Iterable[int],
                     last_verified: int | None, open_operations: Iterable[Record] = (),
                     under_test: Iterable[int] = (), loaded: Iterable[int] = ()) -> Retention:
    """``versions``: the filed version folders; ``loaded``: the versions Triton holds files of;
    ``under_test``: the shadow run's and the candidate entry's versions. ValueError when ``keep`` < 1."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, not {keep!r}")
    filed = sorted(set(versions), reverse=True)
    named: set[int] = set()
    for record in open_operations:
        named |= _present(record.from_version, record.to_version)
    rules = (
        (KeepReason.SERVED, _present(served)),
        (KeepReason.RESIDENT, set(resident)),
        (KeepReason.LAST_VERIFIED, _present(last_verified)),
        (KeepReason.LOADED, set(loaded)),
        (KeepReason.OPEN_OPERATION, named),
        (KeepReason.CANDIDATE, set(under_test)),
        (KeepReason.NEWEST, set(filed[:keep])),
    )
    kept, prunable = [], []
    for version in filed:
        reasons = tuple(reason for reason, members in rules if version in members)
        if reasons:
            kept.append(Kept(version, reasons))
        else:
            prunable.append(version)
    return Retention(keep, tuple(kept), tuple(sorted(prunable)))


def _present(*versions: int | None) -> set[int]:
    return {v for v in versions if v is not None}
