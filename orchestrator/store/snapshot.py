"""``ModelSnapshot``: what one command knows of a model, read once and passed down.

Config text and parsed config, the version folders and the journal's summary (only what was
appended since the cached summary is read) are taken by ``ModelStore.snapshot()``; each
``meta.yaml``, attestation and ``policy.yaml`` when first asked for, then remembered. A
command's own writes return a new snapshot (``ModelStore``), so nothing asks the disk again
what the command already knows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.core.ensemble import Ensemble, RouteError, route_of
from orchestrator.core.journal import JournalSummary, Record
from orchestrator.core.model import Attestation, Contract, VersionMeta, VersionPolicy, VersionStatus
from orchestrator.core.policy import Policies
from orchestrator.core.switch import fallback_order
from orchestrator.errors import PolicyViolation, RepositoryCorrupt, UnknownVersion
from orchestrator.store.attestation import read_attestation
from orchestrator.store.metafile import META_FILE, MetaError, read_meta
from orchestrator.store.modelconfig import ModelConfig, contract, read_ensembles, version_policy
from orchestrator.store.policyfile import read_policies

# Where ``prune`` keeps a removed version's evidence: <state>/<model>/pruned/<N>/{meta.yaml, removed.json}.
PRUNED_DIR = "pruned"
PRUNED_RECORD = "removed.json"


class Metas(Mapping[int, VersionMeta | RepositoryCorrupt]):
    """Each version's meta.yaml, read on first use and then remembered (a rollback over hundreds of
    versions reads only the few it looks at)."""

    def __init__(self, folder: Path, versions: tuple[int, ...]) -> None:
        self._folder, self._versions = folder, versions
        self._known: dict[int, VersionMeta | RepositoryCorrupt] = {}

    def __getitem__(self, version: int) -> VersionMeta | RepositoryCorrupt:
        if version not in self._versions:
            raise KeyError(version)
        if version not in self._known:
            path = self._folder / str(version) / META_FILE
            try:
                self._known[version] = read_meta(path)
            except MetaError as exc:
                self._known[version] = RepositoryCorrupt(f"{path}: {exc}")
        return self._known[version]

    def __iter__(self) -> Iterator[int]:
        return iter(self._versions)

    def __len__(self) -> int:
        return len(self._versions)


class Attestations(Mapping[int, Attestation | RepositoryCorrupt]):
    """Each version's attestation (store/attestation.py), read on first use and then remembered."""

    def __init__(self, state: Path, metas: Mapping[int, VersionMeta | RepositoryCorrupt],
                 known: dict[int, Attestation | RepositoryCorrupt] | None = None) -> None:
        self._state, self._metas = state, metas
        self._known: dict[int, Attestation | RepositoryCorrupt] = dict(known or {})

    def __getitem__(self, version: int) -> Attestation | RepositoryCorrupt:
        if version not in self._known:
            meta = self._metas[version]
            if isinstance(meta, RepositoryCorrupt):
                self._known[version] = meta
            else:
                try:
                    self._known[version] = read_attestation(self._state, version, meta)
                except RepositoryCorrupt as exc:
                    self._known[version] = exc
        return self._known[version]

    def __iter__(self) -> Iterator[int]:
        return iter(self._metas)

    def __len__(self) -> int:
        return len(self._metas)

    def with_known(self, version: int, attestation: Attestation) -> Attestations:
        """After our own write: the new attestation, without reading it back."""
        return Attestations(self._state, self._metas, {**self._known, version: attestation})


class _Statuses(Mapping[int, VersionStatus]):
    def __init__(self, attestations: Attestations, versions: tuple[int, ...]) -> None:
        self._attestations, self._versions = attestations, versions

    def __getitem__(self, version: int) -> VersionStatus:
        if version not in self._versions:
            raise KeyError(version)
        attestation = self._attestations[version]
        # An unreadable meta or attestation is never a rollback target.
        return VersionStatus.FAILED if isinstance(attestation, RepositoryCorrupt) else attestation.status

    def __iter__(self) -> Iterator[int]:
        return iter(self._versions)

    def __len__(self) -> int:
        return len(self._versions)

    def __contains__(self, version: object) -> bool:
        return version in self._versions


@dataclass(frozen=True)
class ModelSnapshot:
    """What one command knows of a model: read once, passed down, replaced after its own writes."""

    name: str
    folder: Path
    state: Path
    config_text: str
    config: ModelConfig
    versions: tuple[int, ...]
    journal: JournalSummary  # the past as far as commands need it: served order, open operations
    metas: Mapping[int, VersionMeta | RepositoryCorrupt] = field(repr=False)
    attestations: Attestations = field(repr=False)
    # Shared by the snapshots a command derives from this one: policy.yaml is not among its writes.
    read_once: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def config_policy(self) -> VersionPolicy:
        """The config's version_policy (Triton's default, the latest one, when it has none)."""
        return version_policy(self.config)

    @property
    def resident(self) -> tuple[int, ...]:
        """Versions the config on disk tells Triton to load."""
        return self.config_policy.resident(list(self.versions))

    @property
    def served(self) -> int | None:
        resident = self.resident
        return max(resident) if resident else None

    @property
    def outputs(self) -> list[str]:
        return [t.name for t in self.config.output]

    @property
    def policies(self) -> Policies:
        """policy.yaml, parsed when first needed (a broken file must not stop a rollback that ignores it)."""
        if "policies" not in self.read_once:
            self.read_once["policies"] = read_policies(self.state)
        return self.read_once["policies"]  # type: ignore[return-value]

    @property
    def route(self) -> Ensemble | None:
        """The ensemble clients reach this model through (``core/ensemble.py``), None when they call it directly;
        PolicyViolation when the repository leaves it ambiguous and the policy does not say."""
        if "route" not in self.read_once:
            try:
                self.read_once["route"] = route_of(self.name, read_ensembles(self.folder.parent),
                                                   self.policies.promotion.route)
            except RouteError as exc:
                raise PolicyViolation(str(exc)) from exc
        return self.read_once["route"]  # type: ignore[return-value]

    @property
    def client_contract(self) -> Contract:
        """What clients send and get: the route's contract, else the model's own (the golden set's shape)."""
        route = self.route
        return route.contract if route is not None else contract(self.config)

    @property
    def client_outputs(self) -> list[str]:
        route = self.route
        return route.output_names if route is not None else self.outputs

    def statuses(self, exclude: set[int] | None = None) -> Mapping[int, VersionStatus]:
        versions = tuple(v for v in self.versions if v not in (exclude or set()))
        return _Statuses(self.attestations, versions)

    def require(self, version: int) -> Path:
        if version not in self.versions:
            evidence = self.state / PRUNED_DIR / str(version)
            pruned = str(evidence) if (evidence / PRUNED_RECORD).is_file() else None
            raise UnknownVersion(self.name, version, list(self.versions), pruned)
        return self.folder / str(version)

    def meta(self, version: int) -> VersionMeta:
        self.require(version)
        meta = self.metas[version]
        if isinstance(meta, RepositoryCorrupt):
            raise meta
        return meta

    def attestation(self, version: int) -> Attestation:
        self.require(version)
        attestation = self.attestations[version]
        if isinstance(attestation, RepositoryCorrupt):
            raise attestation
        return attestation

    def status(self, version: int) -> VersionStatus:
        return self.statuses()[version]

    def fallbacks(self, exclude: set[int], limit: int | None = None) -> list[int]:
        """Verified versions to fall back to, best first (core.switch.fallback_order)."""
        return fallback_order(self.journal.served, self.statuses(exclude), exclude=-1, limit=limit)

    def last_verified(self) -> int | None:
        """The rollback target: the best verified version other than the served one."""
        order = self.fallbacks(exclude={self.served} if self.served is not None else set(), limit=1)
        return order[0] if order else None

    def recorded(self, *records: Record) -> ModelSnapshot:
        return replace(self, journal=self.journal.add(*records))
