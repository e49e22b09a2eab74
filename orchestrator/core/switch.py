"""Pure planning of version switches: which versions Triton should hold, in which order.

Triton sends a request that names no version to the highest-numbered loaded version, so
the served version is always the highest one in the policy and every fallback kept
resident must be lower. A switch is a short list of policies applied one after another,
each of which leaves some version serving, so no request ever finds nothing loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.core.journal import History
from orchestrator.core.model import VersionStatus
from orchestrator.errors import PolicyViolation


@dataclass(frozen=True)
class SwitchPlan:
    target: int
    steps: tuple[tuple[int, ...], ...]  # policies to apply, in order
    switch_step: int  # index of the step after which the target serves

    @property
    def final(self) -> tuple[int, ...]:
        return self.steps[-1]


def served_history(history: History) -> list[int]:
    """Versions in the order they started serving, from the journal's completed switches."""
    return list(history.summary().served)


def fallback_order(served_history: Iterable[int], statuses: Mapping[int, VersionStatus], exclude: int,
                   limit: int | None = None) -> list[int]:
    """Verified versions to fall back to, best first: most recently served, then newest.

    ``statuses`` may be lazy (a mapping that reads a version's meta on access): versions are
    looked up in preference order and the search stops after ``limit`` finds, so a rollback on
    a repository with hundreds of versions reads only the few it needs.
    """
    order: list[int] = []
    candidates = [*reversed(list(served_history)), *sorted(statuses, reverse=True)]
    for version in candidates:
        if limit is not None and len(order) >= limit:
            break
        if version != exclude and version not in order and version in statuses \
                and statuses[version] is VersionStatus.VERIFIED:
            order.append(version)
    return order


def plan_switch(current: Iterable[int], target: int, fallbacks: Iterable[int], keep_resident: int,
                pinned: Iterable[int] = ()) -> SwitchPlan:
    """Steps from the ``current`` policy to one serving ``target`` with up to ``keep_resident`` fallbacks, and
    the ``pinned`` versions below it (a label points at them) kept loaded as well."""
    resident = set(current)
    kept = [*[v for v in fallbacks if v < target][:keep_resident], *(v for v in pinned if v < target)]
    final = tuple(sorted({target, *kept}))
    steps: list[tuple[int, ...]] = []
    if target not in resident:
        steps.append(tuple(sorted(resident | {target})))  # load it beside what serves now
    steps.append(tuple(sorted({target} | (resident & set(kept)))))  # unload what outranks it
    steps.append(final)  # load missing fallbacks, after the switch so it stays fast
    deduped: list[tuple[int, ...]] = []
    for step in steps:
        if not deduped or deduped[-1] != step:
            deduped.append(step)
    if tuple(sorted(resident)) == deduped[0] and len(deduped) > 1:
        deduped.pop(0)  # already there
    switch_step = next(i for i, step in enumerate(deduped) if max(step) == target)
    return SwitchPlan(target, tuple(deduped), switch_step)


def rollback_target(name: str, served: int | None, requested: int | None, fallbacks: list[int],
                    requested_status: VersionStatus | None, force: bool) -> int:
    """The version a rollback serves: ``requested`` (verified unless forced), else the best fallback.

    PolicyViolation says why there is none.
    """
    if served is None:
        raise PolicyViolation(f"{name} serves nothing: there is nothing to roll back")
    if requested is None:
        if not fallbacks:
            raise PolicyViolation(f"{name} has no verified version other than v{served} to roll back to")
        return fallbacks[0]
    if requested != served and requested_status is not VersionStatus.VERIFIED and not force:
        status = requested_status.value if requested_status is not None else "unreadable"
        raise PolicyViolation(f"{name} v{requested} is {status}, not verified: roll back to it only with --force")
    return requested


def status_after_rollback(status: VersionStatus, quarantine: bool) -> VersionStatus | None:
    """What the version rolled back from becomes (None: it keeps its status).

    A failed or unverified version keeps its status; quarantine is never lifted here.
    """
    if status is VersionStatus.QUARANTINED or (status is not VersionStatus.VERIFIED and not quarantine):
        return None
    return VersionStatus.QUARANTINED if quarantine else VersionStatus.ROLLED_BACK
