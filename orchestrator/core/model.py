"""What a model version is, as values: identity, contract, verification, Triton's version policy.

Pure: the YAML and protobuf forms live in ``store/metafile.py`` and ``store/modelconfig.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any


class VersionStatus(str, enum.Enum):
    UNVERIFIED = "unverified"  # filed, never checked
    VERIFIED = "verified"  # passed the promotion checks
    FAILED = "failed"  # refused by a promotion check
    ROLLED_BACK = "rolled_back"  # served, then rolled back by hand; may be promoted again
    QUARANTINED = "quarantined"  # rolled back by the watcher; promote needs --force


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton's names: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name}:{self.datatype}{list(self.dims)}"


@dataclass(frozen=True)
class Contract:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Verification:
    status: VersionStatus = VersionStatus.UNVERIFIED
    verified_by: str | None = None
    verified_at: str | None = None
    golden: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    @property
    def verified(self) -> bool:
        return self.status is VersionStatus.VERIFIED


@dataclass(frozen=True)
class VersionMeta:
    model: str
    version: int | None  # None in a package that leaves numbering to the repository
    artifacts: dict[str, str]  # file name -> sha256
    contract: Contract
    framework: dict[str, str] = field(default_factory=dict)
    target_device: str = "cpu"
    source: str = ""
    created_at: str = ""  # when the package was built
    filed_at: str = ""  # when this repository filed it
    verification: Verification = field(default_factory=Verification)
    extra: dict[str, Any] = field(default_factory=dict)  # fields we carry but do not interpret

    def with_verification(self, verification: Verification) -> VersionMeta:
        return replace(self, verification=verification)


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "specific", "latest" or "all"
    versions: tuple[int, ...] = ()  # for "specific"
    latest: int = 1  # for "latest"

    def resident(self, available: list[int]) -> tuple[int, ...]:
        """The versions Triton loads from ``available`` folders under this policy."""
        if self.kind == "all":
            return tuple(sorted(available))
        if self.kind == "latest":
            return tuple(sorted(available)[-self.latest:]) if available else ()
        return tuple(v for v in sorted(self.versions) if v in available)


@dataclass(frozen=True)
class Attestation:
    """What became known of a version after it was filed: its verification, its last shadow run, and
    what its loads cost.

    Kept in the orchestrator's state folder, never in the version folder, so that writing it
    never waits for Triton to let go of the version's files. ``filed_at`` ties it to one filing
    of the version (a version number filed again after its folder was removed starts afresh).
    """

    verification: Verification = field(default_factory=Verification)
    shadow: dict[str, Any] | None = None  # core.shadow_gate.shadow_record of the last finished run
    filed_at: str = ""
    # Memory the device lost while the version loaded (MemAvailable before - after; on a Jetson the same
    # pool as the GPU's): what the next candidate is expected to need beside it.
    footprint_bytes: int | None = None
    # Loads that failed since the last one that worked: a broken plan can leak device memory on every
    # failed load, so promote loads it again only when asked to (--retry).
    load_failures: int = 0

    @property
    def status(self) -> VersionStatus:
        return self.verification.status
