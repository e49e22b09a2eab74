"""Which versions config.pbtxt may make Triton load: a pure decision over statuses and the journal.

A version may be resident when it is verified, when it is the version the journal says serves
now (the orchestrator put it there: a promote, ``rollback --force``), or, while the journal has
no served version at all (a model the orchestrator has not switched yet), when it was there
before the orchestrator: a version this orchestrator filed itself is never adopted unverified.
Anything else (a hand edit, a config without version_policy that lets Triton take the newest
folder) is dropped before anything loads it. ``usecases/residency.py`` applies the decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.model import VersionStatus
from orchestrator.core.switch import fallback_order

# A version some check judged bad: never adopted, never brought back by the guard.
JUDGED_BAD = frozenset({VersionStatus.FAILED, VersionStatus.QUARANTINED})


@dataclass(frozen=True)
class ResidencyDecision:
    resident: tuple[int, ...]  # what the config makes Triton load
    allowed: tuple[int, ...]  # what it may load: the rewrite when it differs from ``resident``
    dropped: tuple[tuple[int, VersionStatus], ...] = ()  # refused versions and their statuses
    restored: int | None = None  # brought back because the config's served version was dropped
    refuse: bool = False  # nothing may serve: write nothing, load nothing

    @property
    def rewrite(self) -> bool:
        return not self.refuse and self.allowed != self.resident

    def describe_dropped(self) -> str:
        return ", ".join(f"{status.value} v{version}" for version, status in self.dropped)

    def describe(self, how: str = "listed") -> str:
        """One line for the journal and the log; ``how``: how the config named the dropped versions."""
        back = f" (v{self.restored} served before)" if self.restored is not None else ""
        return (f"config.pbtxt {how} {self.describe_dropped()} (hand-edited?); rewritten to "
                f"{', '.join(f'v{v}' for v in self.allowed)}{back}")


def guard_resident(resident: Sequence[int], statuses: Mapping[int, VersionStatus], journal_served: Sequence[int],
                   filed_here: Collection[int] = ()) -> ResidencyDecision:
    """``statuses``: every version on disk (may be lazy); ``journal_served``: versions in the order they
    started serving; ``filed_here``: versions this orchestrator's import filed (the bootstrap never adopts
    them unverified)."""
    resident = tuple(sorted(resident))
    serving = journal_served[-1] if journal_served else None

    def may_stay(version: int) -> bool:
        status = statuses[version]
        if status is VersionStatus.VERIFIED or version == serving:
            return True  # a journal-served version stays even when forced there unverified or quarantined
        return serving is None and version not in filed_here and status not in JUDGED_BAD

    allowed = tuple(v for v in resident if may_stay(v))
    dropped = tuple((v, statuses[v]) for v in resident if not may_stay(v))
    if not dropped:
        return ResidencyDecision(resident, resident)
    restored = _restore(allowed, max(resident), serving, statuses)
    if restored is not None:
        return ResidencyDecision(resident, tuple(sorted({*allowed, restored})), dropped, restored)
    if allowed:
        return ResidencyDecision(resident, allowed, dropped)
    best = fallback_order(journal_served, statuses, exclude=-1, limit=1)  # most recently served, then newest
    if best:
        return ResidencyDecision(resident, (best[0],), dropped)
    return ResidencyDecision(resident, (), dropped, refuse=True)


def _restore(allowed: tuple[int, ...], config_served: int, serving: int | None,
             statuses: Mapping[int, VersionStatus]) -> int | None:
    """The journal's served version, when the edit dropped the config's served version and it can serve again
    (on disk, not judged bad, above what stays): keeping only the fallbacks would switch to an older version
    nobody asked for."""
    if serving is None or serving in allowed or config_served in allowed or serving not in statuses:
        return None
    if statuses[serving] in JUDGED_BAD or (allowed and serving < max(allowed)):
        return None
    return serving


def refusal(decision: ResidencyDecision, config: str, journal_served: Sequence[int]) -> str:
    """What the operator reads when nothing may serve."""
    gone = f"v{journal_served[-1]}, which served last, cannot serve again" if journal_served else \
        "the journal names no version that served"
    return (f"{config} makes Triton load {decision.describe_dropped()}; no verified version is on disk and {gone}: "
            f"restore its version_policy to a verified version (or remove the unverified folder), then run "
            f"`orchestrate reconcile`; nothing was written or loaded")
