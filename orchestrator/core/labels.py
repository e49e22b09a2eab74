"""Version labels, TF Serving's way (``stable``, ``canary``): names a client or an operator uses instead
of a number. Triton has none; the orchestrator keeps them per model and exports them.

``stable`` follows the served version: promote moves it, rollback moves it back. Any other label
points at a version that is READY in Triton and stays resident while it is labelled (beside the
fallbacks); a label can be moved to a verified version below the served one (it is loaded, as a
fallback is), never to one above it (loading it would make it serve: promote it instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.core.model import VersionStatus
from orchestrator.errors import PolicyViolation, UsageError

STABLE = "stable"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LOOKS_LIKE_A_VERSION = re.compile(r"[vV]?[0-9]+")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or _LOOKS_LIKE_A_VERSION.fullmatch(name):
        raise UsageError(f"{name!r} is not a label name: lower-case letters, digits, '-' and '_', starting with "
                         f"a letter, and not a version (v2)")
    return name


@dataclass(frozen=True)
class LabelMove:
    name: str
    version: int
    load: bool  # the version must be loaded first (a verified version below the served one)


def decide_move(model: str, name: str, version: int, served: int | None, ready: Iterable[int],
                status: VersionStatus) -> LabelMove:
    """Where ``name`` may point: PolicyViolation says why not."""
    check_name(name)
    if name == STABLE:
        raise PolicyViolation(f"{STABLE!r} follows the served version of {model}: promote or roll back to move it")
    if version in set(ready):
        return LabelMove(name, version, load=False)
    if served is not None and version > served:
        raise PolicyViolation(f"{model} v{version} is above the served v{served}: loading it would make it serve "
                              f"(Triton answers unversioned requests from the highest version); promote it instead")
    if status is not VersionStatus.VERIFIED:
        raise PolicyViolation(f"{model} v{version} is {status.value}, not verified: a label loads only a verified "
                              f"version")
    return LabelMove(name, version, load=True)


def pinned(labels: Mapping[str, int]) -> frozenset[int]:
    """Versions kept resident because a label other than ``stable`` points at them."""
    return frozenset(v for name, v in labels.items() if name != STABLE)


def after_switch(labels: Mapping[str, int], served: int, resident: Iterable[int]) -> tuple[dict[str, int],
                                                                                           dict[str, int]]:
    """The labels once ``served`` serves with ``resident`` loaded: ``stable`` moved to it, labels whose
    version is no longer loaded removed. Returns (labels, removed)."""
    loaded = set(resident)
    kept = {name: v for name, v in labels.items() if name != STABLE and v in loaded}
    removed = {name: v for name, v in labels.items() if name != STABLE and v not in loaded}
    return {STABLE: served, **kept}, removed
