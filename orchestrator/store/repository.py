"""The Triton model repository on disk, and the orchestrator's own state beside it.

Triton reloads every loaded version of a model when any file under the model's folder
changes, except in version folders it does not load (measured: a journal line appended
inside the folder reloaded all versions). So the model folder holds only what Triton
reads, and everything the orchestrator writes often lives in a separate state folder:

    <repository>/<model>/config.pbtxt          version_policy: resident versions; the highest serves
    <repository>/<model>/<N>/meta.yaml         identity, checksums, contract, verification
    <repository>/<model>/<N>/<artifacts>
    <repository>/<model>/.staging-<op>/        an import in progress (renamed to <N> when complete)
    <state>/<model>/policy.yaml                promotion policy (optional)
    <state>/<model>/golden/                    golden set
    <state>/<model>/version_history.log        the journal
    <state>/<model>/.orchestrator.lock

A candidate under test is loaded as a separate model ``<model>__candidate`` whose only
version folder is a link to the filed version: it takes no production traffic.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from orchestrator import faults
from orchestrator.core.policy import PromotionPolicy, load_promotion_policy
from orchestrator.core.versions import is_version_folder
from orchestrator.delivery.package import copy_artifacts
from orchestrator.errors import RepositoryCorrupt, UnknownModel, UnknownVersion
from orchestrator.store.atomic import fsync_dir, write_atomic
from orchestrator.core.journal import now_iso
from orchestrator.store.journal import JOURNAL_FILE, Journal
from orchestrator.store.metafile import (
    META_FILE,
    MetaError,
    Verification,
    VersionMeta,
    VersionStatus,
    read_meta,
    write_meta,
)
from orchestrator.store.modelconfig import (
    CONFIG_FILE,
    ConfigError,
    ModelConfig,
    VersionPolicy,
    parse_config,
    renamed,
    version_policy,
    with_specific_versions,
)

CANDIDATE_SUFFIX = "__candidate"
STAGING_PREFIX = ".staging-"


def candidate_name(model: str) -> str:
    return model + CANDIDATE_SUFFIX


class ModelStore:
    """One model's folder."""

    def __init__(self, folder: Path, state: Path) -> None:
        self.folder = folder
        self.state = state
        self.name = folder.name
        state.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(state / JOURNAL_FILE)

    # --- config -------------------------------------------------------------------------
    def config_text(self) -> str:
        try:
            return (self.folder / CONFIG_FILE).read_text()
        except OSError as exc:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE}: {exc.strerror}") from exc

    def config(self) -> ModelConfig:
        try:
            config = parse_config(self.config_text())
        except ConfigError as exc:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE} is invalid: {exc}") from exc
        if config.name and config.name != self.name:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE} names model {config.name!r}, not {self.name!r}")
        return config

    def version_policy(self) -> VersionPolicy:
        return version_policy(self.config())

    def resident(self) -> tuple[int, ...]:
        """Versions the config on disk tells Triton to load."""
        return self.version_policy().resident(self.versions())

    def served(self) -> int | None:
        resident = self.resident()
        return max(resident) if resident else None

    def write_resident(self, versions: tuple[int, ...]) -> ModelConfig:
        text, config = with_specific_versions(self.config_text(), versions)
        write_atomic(self.folder / CONFIG_FILE, text)
        return config

    def promotion_policy(self) -> PromotionPolicy:
        return load_promotion_policy(self.state)

    # --- versions -----------------------------------------------------------------------
    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.folder.iterdir() if p.is_dir() and is_version_folder(p.name))

    def require(self, version: int) -> Path:
        path = self.folder / str(version)
        if not path.is_dir():
            raise UnknownVersion(self.name, version, self.versions())
        return path

    def meta(self, version: int) -> VersionMeta:
        path = self.require(version) / META_FILE
        try:
            return read_meta(path)
        except MetaError as exc:
            raise RepositoryCorrupt(f"{path}: {exc}") from exc

    def status(self, version: int) -> VersionStatus:
        try:
            return self.meta(version).verification.status
        except RepositoryCorrupt:
            return VersionStatus.FAILED  # unreadable meta: never a rollback target

    def statuses(self) -> dict[int, VersionStatus]:
        return {v: self.status(v) for v in self.versions()}

    def lazy_statuses(self, exclude: set[int] | None = None) -> LazyStatuses:
        """Statuses read from meta.yaml only when asked for (and then remembered)."""
        return LazyStatuses(self, [v for v in self.versions() if v not in (exclude or set())])

    def set_verification(self, version: int, verification: Verification) -> None:
        """Only the verification block changes; the identity of a filed version never does."""
        meta = self.meta(version)
        write_meta(self.require(version) / META_FILE, meta.with_verification(verification))

    # --- filing -------------------------------------------------------------------------
    def next_version(self) -> int:
        versions = self.versions()
        return (max(versions) if versions else 0) + 1

    def file_version(self, source: Path, meta: VersionMeta, version: int, op: str) -> Path:
        """Copy a verified package in as ``version``: staged under a name Triton ignores, then renamed."""
        staging = self.folder / f"{STAGING_PREFIX}{op}"
        staging.mkdir()
        try:
            faults.before_write("artifact")
            copy_artifacts(source, staging, meta)
            for name in meta.artifacts:
                _fsync_file(staging / name)
            filed = replace(meta, version=version, filed_at=now_iso(), verification=Verification())
            write_meta(staging / META_FILE, filed)
            faults.checkpoint("import:staged")
            final = self.folder / str(version)
            if final.exists():
                raise RepositoryCorrupt(f"{final} appeared while importing; nothing was filed")
            os.rename(staging, final)
            fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def staging_leftovers(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(STAGING_PREFIX))

    # --- candidate entry ----------------------------------------------------------------
    def write_candidate_entry(self, version: int) -> tuple[str, ModelConfig]:
        """A sibling model serving only ``version``, through a link to the filed folder."""
        entry = self.folder.parent / candidate_name(self.name)
        remove_tree(entry)  # a leftover from an interrupted command is rebuilt, never reused
        entry.mkdir()
        text, _ = renamed(self.config_text(), candidate_name(self.name))
        text, config = with_specific_versions(text, (version,))
        write_atomic(entry / CONFIG_FILE, text)
        os.symlink(os.path.join("..", self.name, str(version)), entry / str(version))
        fsync_dir(entry)
        return candidate_name(self.name), config

    def remove_candidate_entry(self) -> None:
        remove_tree(self.folder.parent / candidate_name(self.name))

    def has_candidate_entry(self) -> bool:
        return (self.folder.parent / candidate_name(self.name)).exists()


class LazyStatuses(Mapping[int, VersionStatus]):
    def __init__(self, store: ModelStore, versions: list[int]) -> None:
        self._store, self._versions = store, versions
        self._known: dict[int, VersionStatus] = {}

    def __getitem__(self, version: int) -> VersionStatus:
        if version not in self._versions:
            raise KeyError(version)
        if version not in self._known:
            self._known[version] = self._store.status(version)
        return self._known[version]

    def __iter__(self) -> Iterator[int]:
        return iter(self._versions)

    def __len__(self) -> int:
        return len(self._versions)

    def __contains__(self, version: object) -> bool:
        return version in self._versions


class ModelRepository:
    def __init__(self, root: Path, state_root: Path) -> None:
        self.root = root
        self.state_root = state_root

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and not p.name.endswith(CANDIDATE_SUFFIX)
            and (p / CONFIG_FILE).is_file()
        )

    def model(self, name: str) -> ModelStore:
        if name not in self.models():
            raise UnknownModel(name, self.models())
        return ModelStore(self.root / name, self.state_root / name)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
