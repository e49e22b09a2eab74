"""Whether a candidate fits beside what is loaded: the third engine of a promote.

During a promote the device holds the served version, its resident fallback and the candidate at
once. On a Jetson all three live in the one unified memory pool, and a load that does not fit
ends in the out-of-memory killer, not in a clean error. So before the candidate loads, what the
device has left is compared with what the candidate needs plus a headroom; short of that, the
resident fallback may be unloaded first (when the policy allows it), else the promote is refused.

Pure: the numbers come in (``store/meminfo.py`` reads MemAvailable), a decision goes out.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20
DECLARED_FIELD = "memory_mb"  # in a package's meta.yaml: what the version needs once loaded, in MiB


@dataclass(frozen=True)
class MemoryNeed:
    bytes: int
    source: str  # where the figure comes from, for the operator


@dataclass(frozen=True)
class MemoryDecision:
    fits: bool
    drop: tuple[int, ...]  # resident fallbacks to unload before the candidate loads
    reason: str


def candidate_need(declared_mb: object, served: int | None, served_footprint: int | None) -> MemoryNeed | None:
    """The larger of the package's own figure and what the served version measured at its load: a package
    cannot pass the gate by declaring less than the device has seen a version of this model take.

    ``declared_mb`` is meta.yaml's raw value; a value that is not a positive number raises ValueError.
    """
    measured = MemoryNeed(served_footprint, f"v{served}'s measured footprint") \
        if served is not None and served_footprint is not None else None
    if declared_mb is not None:
        if isinstance(declared_mb, bool) or not isinstance(declared_mb, int | float) or not declared_mb > 0 \
                or declared_mb == float("inf"):
            raise ValueError(f"{DECLARED_FIELD} must be a positive number of MiB, not {declared_mb!r}")
        declared = MemoryNeed(int(declared_mb * MIB), f"{DECLARED_FIELD} {declared_mb:g} in its meta.yaml")
        if measured is None or declared.bytes >= measured.bytes:
            return declared
        return MemoryNeed(measured.bytes, f"{measured.source}, above the {declared.source}")
    return measured


def decide_memory(available: int, need: MemoryNeed, headroom: int, fallbacks: dict[int, int | None],
                  may_drop: bool) -> MemoryDecision:
    """``fallbacks``: the resident, non-serving versions and their measured footprints (None: unknown).

    Unloading a fallback is counted as freeing its measured footprint, or the candidate's need when
    it was never measured (the versions of one model are usually alike); the caller measures again
    after the unload, so an optimistic guess costs a refusal, never an overcommit.
    """
    wanted = need.bytes + headroom
    summary = (f"the candidate needs {_mib(need.bytes)} ({need.source}) + {_mib(headroom)} headroom, "
               f"the device has {_mib(available)} available")
    if available >= wanted:
        return MemoryDecision(True, (), summary)
    if may_drop and fallbacks:
        freed, drop = 0, []
        for version in sorted(fallbacks):  # the oldest first: the newest is the better rollback target
            drop.append(version)
            freed += fallbacks[version] or need.bytes
            if available + freed >= wanted:
                return MemoryDecision(True, tuple(drop), f"{summary}: unloading fallback "
                                      f"{', '.join(f'v{v}' for v in drop)} first")
    hint = ("" if may_drop or not fallbacks else
            "; set promotion.free_fallback_for_memory to unload the resident fallback first")
    return MemoryDecision(False, (), f"{summary}{hint}")


def _mib(value: int) -> str:
    return f"{value / MIB:,.0f} MiB"
