"""The Triton model repository on disk, and the orchestrator's own state beside it.

Triton reloads every loaded version of a model when any file under the model's folder
changes, except in version folders it does not load (measured: a journal line appended
inside the folder reloaded all versions). So the model folder holds only what Triton
reads, and everything the orchestrator writes often lives in a separate state folder:

    <repository>/<model>/config.pbtxt          version_policy: resident versions; the highest serves
    <repository>/<model>/<N>/meta.yaml         identity, checksums, contract, provenance: never changes
    <repository>/<model>/<N>/<artifacts>
    <repository>/<model>/.staging-<op>/        an import in progress (renamed to <N> when complete)
    <repository>/<model>/.trash-<N>-<op>/      a version being pruned (the next repair deletes a leftover)
    <state>/<model>/policy.yaml                promotion policy (optional)
    <state>/<model>/golden/                    golden set
    <state>/<model>/version_history.log        the journal
    <state>/<model>/attestations/<N>.json      verification and shadow result of version N (kept when pruned)
    <state>/<model>/pruned/<N>/meta.yaml       a pruned version's meta.yaml, as filed
    <state>/<model>/pruned/<N>/removed.json    and what pruning removed: each file's sha256 and size
    <state>/<model>/.orchestrator.lock

A command reads what it needs once, as a ``ModelSnapshot`` (``ModelStore.snapshot()``), and
passes it down; a write returns the snapshot it leaves behind instead of asking the disk again.

A candidate under test is loaded as a separate model ``<model>__candidate`` whose only
version folder is a link to the filed version: it takes no production traffic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator import faults
from orchestrator.core.ensemble import Ensemble
from orchestrator.core.journal import Record, now_iso
from orchestrator.core.model import Attestation
from orchestrator.core.shadow_gate import META_KEY as SHADOW_META_KEY
from orchestrator.core.versions import is_version_folder
from orchestrator.errors import RepositoryCorrupt, UnknownModel, UnmanagedModel
from orchestrator.store.atomic import fsync_dir, write_atomic
from orchestrator.store.attestation import forget_attestation, write_attestation
from orchestrator.store.journal import JOURNAL_FILE, Journal
from orchestrator.store.metafile import (
    META_FILE,
    Verification,
    VersionMeta,
    VersionStatus,
    write_meta,
)
from orchestrator.store.modelconfig import (
    CANDIDATE_SUFFIX,
    CONFIG_FILE,
    ConfigError,
    ModelConfig,
    ensemble_candidate,
    ensemble_of,
    is_ensemble,
    parse_config,
    read_config,
    read_ensembles,
    renamed,
    version_policy,
    with_specific_versions,
)
from orchestrator.store.snapshot import PRUNED_DIR, PRUNED_RECORD, Attestations, Metas, ModelSnapshot

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    """A version whose artifacts and folder were removed; ``evidence``: where its meta.yaml and checksums are."""

    version: int
    freed_bytes: int
    files: int
    evidence: Path


def candidate_name(model: str) -> str:
    return model + CANDIDATE_SUFFIX


class ModelStore:
    """One model's folder and its state folder: every read and write of them."""

    def __init__(self, folder: Path, state: Path) -> None:
        self.folder = folder
        self.state = state
        self.name = folder.name
        state.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(state / JOURNAL_FILE)

    # --- reading --------------------------------------------------------------------------
    def snapshot(self) -> ModelSnapshot:
        text = self.config_text()
        versions = tuple(self.versions())
        metas = Metas(self.folder, versions)
        return ModelSnapshot(self.name, self.folder, self.state, text, self._parse(text), versions,
                             self.journal.summary(), metas, Attestations(self.state, metas))

    def config_text(self) -> str:
        try:
            return (self.folder / CONFIG_FILE).read_text()
        except OSError as exc:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE}: {exc.strerror}") from exc

    def _parse(self, text: str) -> ModelConfig:
        try:
            config = parse_config(text)
        except ConfigError as exc:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE} is invalid: {exc}") from exc
        if config.name and config.name != self.name:
            raise RepositoryCorrupt(f"{self.folder / CONFIG_FILE} names model {config.name!r}, not {self.name!r}")
        return config

    def config(self) -> ModelConfig:
        return self._parse(self.config_text())

    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.folder.iterdir() if p.is_dir() and is_version_folder(p.name))

    def resident(self) -> tuple[int, ...]:
        """For daemons that look every tick: config and folders only, no meta or journal."""
        return version_policy(self.config()).resident(self.versions())

    def served(self) -> int | None:
        resident = self.resident()
        return max(resident) if resident else None

    # One-off reads and writes outside a command (tests, benchmarks, tools): a fresh snapshot each.
    def meta(self, version: int) -> VersionMeta:
        return self.snapshot().meta(version)

    def status(self, version: int) -> VersionStatus:
        return self.snapshot().status(version)

    def attestation(self, version: int) -> Attestation:
        return self.snapshot().attestation(version)

    def set_verification(self, version: int, verification: Verification) -> None:
        self.record_verification(self.snapshot(), version, verification)

    def staging_leftovers(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(STAGING_PREFIX))

    def has_candidate_entry(self) -> bool:
        return (self.folder.parent / candidate_name(self.name)).exists()

    def candidate_versions(self) -> tuple[int, ...]:
        """The versions the candidate entry links to (none without an entry)."""
        entry = self.folder.parent / candidate_name(self.name)
        if not entry.is_dir():
            return ()
        return tuple(sorted(int(p.name) for p in entry.iterdir() if is_version_folder(p.name)))

    def trash_leftovers(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.startswith(TRASH_PREFIX))

    def pruned_versions(self) -> tuple[int, ...]:
        """Versions pruned: their evidence is in the state folder and their folder is gone."""
        return tuple(v for v in self._evidenced() if not (self.folder / str(v)).is_dir())

    def pruned_record(self, version: int) -> dict[str, object] | None:
        """What pruning ``version`` removed (``removed.json``), or None when it was not pruned."""
        if version not in self.pruned_versions():
            return None
        path = self.state / PRUNED_DIR / str(version) / PRUNED_RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RepositoryCorrupt(f"{path} is unreadable: {exc}") from exc
        return record if isinstance(record, dict) else {}

    def version_bytes(self, version: int) -> int:
        """What pruning ``version`` would free: the size of every file in its folder."""
        return sum(size for _, size in _files(self.folder / str(version)))

    def _evidenced(self) -> list[int]:
        folder = self.state / PRUNED_DIR
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir()
                      if is_version_folder(p.name) and (p / PRUNED_RECORD).is_file())

    # --- writing --------------------------------------------------------------------------
    def record(self, snapshot: ModelSnapshot, record: Record) -> ModelSnapshot:
        """Append to the journal; the snapshot that knows it."""
        self.journal.append(record)
        return snapshot.recorded(record)

    def write_resident(self, snapshot: ModelSnapshot, versions: tuple[int, ...]) -> ModelSnapshot:
        text, config = with_specific_versions(snapshot.config_text, versions)
        write_atomic(self.folder / CONFIG_FILE, text)
        return replace(snapshot, config_text=text, config=config)

    def record_verification(self, snapshot: ModelSnapshot, version: int, verification: Verification,
                            footprint_bytes: int | None = None) -> ModelSnapshot:
        """The version's verification, in its attestation (its meta.yaml never changes after filing);
        ``footprint_bytes``: what its load just measured, written in the same file."""
        attestation = replace(snapshot.attestation(version), verification=verification)
        if footprint_bytes is not None:
            attestation = replace(attestation, footprint_bytes=footprint_bytes)
        return self._attest(snapshot, version, attestation)

    def record_load(self, snapshot: ModelSnapshot, version: int, failed: bool) -> ModelSnapshot:
        """Count a failed load of ``version``, or clear the count once a load worked."""
        before = snapshot.attestation(version)
        return self._attest(snapshot, version, replace(before, load_failures=before.load_failures + 1 if failed else 0))

    def record_shadow(self, snapshot: ModelSnapshot, version: int, record: dict[str, object]) -> ModelSnapshot:
        return self._attest(snapshot, version, replace(snapshot.attestation(version), shadow=record))

    def _attest(self, snapshot: ModelSnapshot, version: int, attestation: Attestation) -> ModelSnapshot:
        # The first write of a repository from before attestations carries meta.yaml's over.
        attestation = replace(attestation, filed_at=snapshot.meta(version).filed_at)
        write_attestation(self.state, version, attestation)
        return replace(snapshot, attestations=snapshot.attestations.with_known(version, attestation))

    def next_version(self, snapshot: ModelSnapshot) -> int:
        """One past the highest number filed: a pruned version's number is never filed again (retention keeps
        the highest folder anyway; its evidence says so too, should that folder go by hand)."""
        return max((*snapshot.versions, *self._evidenced()), default=0) + 1

    def file_version(self, source: Path, meta: VersionMeta, version: int, op: str) -> Path:
        """Copy a verified package in as ``version``: staged under a name Triton ignores, then renamed."""
        staging = self.folder / f"{STAGING_PREFIX}{op}"
        staging.mkdir()
        try:
            faults.before_write("artifact")
            for name in meta.artifacts:
                shutil.copyfile(source / name, staging / name)
                _fsync_file(staging / name)
            # What gates a promotion (verification, a shadow run) comes from this orchestrator's records only:
            # a package's claims about itself are not filed.
            filed = replace(meta, version=version, filed_at=now_iso(), verification=Verification(),
                            extra={k: v for k, v in meta.extra.items() if k != SHADOW_META_KEY})
            forget_attestation(self.state, version)
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

    def prune_version(self, snapshot: ModelSnapshot, version: int, op: str, status: str
                      ) -> tuple[ModelSnapshot, Pruned]:
        """Remove ``version``'s folder, its evidence first: meta.yaml and each file's sha256 and size go to
        ``<state>/pruned/<N>/`` (durable), then the folder is renamed to a name Triton ignores (durable), then
        deleted. A crash before the rename leaves the version intact (``finish_prunes`` drops the evidence), one
        after it a leftover ``finish_prunes`` deletes. An error before the rename leaves the version intact."""
        folder = snapshot.require(version)
        evidence = self.state / PRUNED_DIR / str(version)
        renamed_to: Path | None = None
        try:
            listing = [_describe(folder, path, size) for path, size in _files(folder)]
            evidence.mkdir(parents=True, exist_ok=True)
            fsync_dir(evidence.parent)
            fsync_dir(self.state)
            if (folder / META_FILE).is_file():
                write_atomic(evidence / META_FILE, (folder / META_FILE).read_bytes())
            freed = sum(int(entry["bytes"]) for entry in listing)
            record = {"model": self.name, "version": version, "op": op, "pruned_at": now_iso(), "status": status,
                      "freed_bytes": freed, "files": listing}
            write_atomic(evidence / PRUNED_RECORD, json.dumps(record, indent=2, sort_keys=True))
            faults.checkpoint("prune:evidence")
            renamed_to = self.folder / f"{TRASH_PREFIX}{version}-{op}"
            os.rename(folder, renamed_to)
            fsync_dir(self.folder)
        except BaseException:
            if renamed_to is None or not renamed_to.exists():
                remove_tree(evidence)
            raise
        faults.checkpoint("prune:renamed")
        try:
            shutil.rmtree(renamed_to)
        except OSError as exc:  # out of Triton's sight already: the next repair deletes the rest
            log.warning("%s: could not delete all of %s (%s); the next command does", self.name, renamed_to, exc)
        versions = tuple(v for v in snapshot.versions if v != version)
        metas = Metas(self.folder, versions)
        snapshot = replace(snapshot, versions=versions, metas=metas, attestations=Attestations(self.state, metas))
        return snapshot, Pruned(version, freed, len(listing), evidence)

    def finish_prunes(self) -> list[str]:
        """For repair: the rest of a pruned folder is deleted (its evidence was written before the rename), and the
        evidence of a prune interrupted before the rename is dropped (that version is intact)."""
        notes = []
        for leftover in self.trash_leftovers():
            try:
                remove_tree(leftover)
            except OSError as exc:  # e.g. files Triton wrote there as another user: out of its sight, say so
                notes.append(f"could not delete the rest of pruned {leftover.name} ({exc.strerror}): delete it "
                             f"by hand")
            else:
                notes.append(f"deleted the rest of pruned {leftover.name}")
        folder = self.state / PRUNED_DIR
        for evidence in sorted(folder.iterdir()) if folder.is_dir() else []:
            if is_version_folder(evidence.name) and (self.folder / evidence.name).is_dir():
                remove_tree(evidence)
                notes.append(f"v{evidence.name} was not pruned (interrupted before its folder moved): kept")
        return notes

    def write_candidate_entry(self, snapshot: ModelSnapshot, version: int) -> tuple[str, ModelConfig]:
        """A sibling model serving only ``version``, through a link to the filed folder."""
        entry = self.folder.parent / candidate_name(self.name)
        remove_tree(entry)  # a leftover from an interrupted command is rebuilt, never reused
        entry.mkdir()
        text, _ = renamed(snapshot.config_text, candidate_name(self.name))
        text, config = with_specific_versions(text, (version,))
        write_atomic(entry / CONFIG_FILE, text)
        os.symlink(os.path.join("..", self.name, str(version)), entry / str(version))
        fsync_dir(entry)
        return candidate_name(self.name), config

    def remove_candidate_entry(self) -> None:
        remove_tree(self.folder.parent / candidate_name(self.name))

    def write_candidate_route(self, route: Ensemble) -> tuple[str, ModelConfig]:
        """``<route>__candidate``: the ensemble clients call, with its step of this model sent to the candidate
        entry, so that a candidate is judged through the same pre- and post-processing as production."""
        name = candidate_name(route.name)
        entry = self.folder.parent / name
        remove_tree(entry)
        entry.mkdir()
        text, config = ensemble_candidate((self.folder.parent / route.name / CONFIG_FILE).read_text(), self.name,
                                          candidate_name(self.name), name)
        write_atomic(entry / CONFIG_FILE, text)
        (entry / "1").mkdir()  # an ensemble's version folder holds nothing
        fsync_dir(entry)
        return name, config

    def candidate_routes(self) -> list[str]:
        """Every ``<ensemble>__candidate`` on disk that sends a step to this model's candidate entry."""
        entry, found = candidate_name(self.name), []
        for folder in sorted(self.folder.parent.glob(f"*{CANDIDATE_SUFFIX}")):
            if folder.name == entry or not (folder / CONFIG_FILE).is_file():
                continue
            try:
                ensemble = ensemble_of(read_config(folder / CONFIG_FILE)[1])
            except ConfigError:
                continue
            if ensemble is not None and entry in ensemble.models:
                found.append(folder.name)
        return found

    def remove_candidate_routes(self) -> None:
        for name in self.candidate_routes():
            remove_tree(self.folder.parent / name)


class ModelRepository:
    """The repository's models, in three kinds: managed (the orchestrator files and switches their versions),
    ensembles (routes to managed models; no weights of their own) and plain models it leaves alone (an
    ensemble's pre- and post-processing steps: folders without meta.yaml that the orchestrator never filed)."""

    def __init__(self, root: Path, state_root: Path) -> None:
        self.root = root
        self.state_root = state_root

    def entries(self) -> list[str]:
        """Every model Triton can load from the repository (not the orchestrator's candidate entries)."""
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

    def models(self) -> list[str]:
        """The managed models."""
        return [name for name in self.entries() if self._kind(name) == "managed"]

    def ensembles(self) -> list[Ensemble]:
        return read_ensembles(self.root)

    def unmanaged(self) -> dict[str, str]:
        """Models the orchestrator leaves alone, and why."""
        return {name: kind for name in self.entries() if (kind := self._kind(name)) != "managed"}

    def _config(self, name: str) -> ModelConfig | None:
        try:
            return read_config(self.root / name / CONFIG_FILE)[1]
        except ConfigError:
            return None  # the model's own commands say what is wrong with it

    def _kind(self, name: str) -> str:
        config = self._config(name)
        if config is not None and is_ensemble(config):
            return "ensemble"
        folder = self.root / name
        versions = [p for p in folder.iterdir() if p.is_dir() and is_version_folder(p.name)]
        # Managed once the orchestrator filed a version or journaled anything about it (so a deleted
        # meta.yaml is still reported as damage, not hidden); a model with no versions yet is one to import into.
        if not versions or (self.state_root / name / JOURNAL_FILE).exists() \
                or any((v / META_FILE).exists() for v in versions):
            return "managed"
        return "plain"

    def model(self, name: str) -> ModelStore:
        models = self.models()
        if name not in models:
            kind = self.unmanaged().get(name)
            if kind == "ensemble":
                routed = [m for e in self.ensembles() if e.name == name for m in e.models if m in models]
                raise UnmanagedModel(name, f"an ensemble: its versions are those of {', '.join(routed) or 'its steps'}"
                                           f", name {'that model' if len(routed) == 1 else 'one of them'}", models)
            if kind == "plain":
                raise UnmanagedModel(name, "a model the orchestrator does not manage (no version of it carries "
                                           "meta.yaml)", models)
            raise UnknownModel(name, models)
        return ModelStore(self.root / name, self.state_root / name)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _files(folder: Path) -> list[tuple[Path, int]]:
    """Every file under ``folder`` (links not followed) with its size, in a stable order."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        links = [d for d in dirs if (Path(root) / d).is_symlink()]  # walked past, removed with the folder
        for name in sorted([*names, *links]):
            path = Path(root) / name
            found.append((path, path.lstat().st_size))
    return found


def _describe(folder: Path, path: Path, size: int) -> dict[str, object]:
    entry: dict[str, object] = {"path": str(path.relative_to(folder)), "bytes": size}
    if path.is_symlink():
        entry["link"] = os.readlink(path)
        return entry
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    entry["sha256"] = digest.hexdigest()
    return entry


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
