"""Model packages: a folder (or .tar.gz) with the artifacts and a ``meta.yaml`` naming their sha256.

Building one is the build side's job (``write_package``); the device side reads and
verifies it (``open_package``) before anything reaches the repository.
"""

from __future__ import annotations

import errno
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from orchestrator.delivery.archive import (
    MAX_ARCHIVE_FILES,
    MAX_COMPRESSION_RATIO,
    MAX_MANIFEST_BYTES,
    MAX_UNPACKED_BYTES,
    SIGNATURE_FILE,
    read_capped,
)
from orchestrator.errors import PackageRejected, WriteFailed
from orchestrator.store.metafile import (
    META_FILE,
    Contract,
    MetaError,
    VersionMeta,
    parse_meta,
    sha256_file,
    write_meta,
)
from orchestrator.store.modelconfig import ModelConfig, contract, primary_file

# The device's own failures while unpacking: the package is not at fault, and is kept.
_DEVICE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


def write_package(dest: Path, meta: VersionMeta, files: dict[str, bytes]) -> Path:
    """Write ``files`` and a ``meta.yaml`` carrying their checksums into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, data in files.items():
        (dest / name).write_bytes(data)
        checksums[name] = sha256_file(dest / name)
    write_meta(dest / META_FILE, replace(meta, artifacts=checksums))
    return dest


@contextmanager
def unpacked(package: Path) -> Iterator[Path]:
    """A private copy of the package: a folder copied, a .tar.gz unpacked, into a temporary folder.

    Verifying and filing a private copy means nobody can swap a file between the signature
    and checksum checks and the copy into the repository.
    """
    if not package.exists():
        raise PackageRejected(str(package), "no such file or folder")
    with tempfile.TemporaryDirectory(prefix="orch-unpack-") as tmp:
        if package.is_dir():
            copy = Path(tmp) / "package"
            try:
                shutil.copytree(package, copy, symlinks=True)
            except OSError as exc:
                if exc.errno in _DEVICE_ERRORS:
                    raise WriteFailed(exc) from exc
                raise PackageRejected(str(package), f"cannot read it ({exc})") from exc
            except shutil.Error as exc:
                raise PackageRejected(str(package), f"cannot read it ({exc})") from exc
            yield copy
            return
        _extract(package, Path(tmp))
        entries = list(Path(tmp).iterdir())
        # Accept archives with everything at the top or under one folder.
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
        yield root


def _extract(archive: Path, dest: Path) -> None:
    name = str(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            total = 0
            for member in tar:  # counted while the index is read: a million-entry archive stops at the limit
                members.append(member)
                if len(members) > MAX_ARCHIVE_FILES:
                    raise PackageRejected(name, f"archive holds more than {MAX_ARCHIVE_FILES} entries")
                if not (member.isfile() or member.isdir()):
                    raise PackageRejected(name, f"archive entry {member.name!r} is not a plain file or folder")
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise PackageRejected(name, "archive unpacks to more than the size limit")
            if total > MAX_UNPACKED_BYTES:
                raise PackageRejected(name, "archive unpacks to more than the size limit")
            ratio = total / max(archive.stat().st_size, 1)
            if ratio > MAX_COMPRESSION_RATIO:
                raise PackageRejected(name, f"archive expands {ratio:.0f}x (limit {MAX_COMPRESSION_RATIO}x): "
                                            f"not a model package")
            # The 'data' filter refuses absolute paths, '..' and links leaving the folder.
            tar.extractall(dest, members=members, filter="data")
    except PackageRejected:
        raise
    except OSError as exc:
        if exc.errno in _DEVICE_ERRORS:  # this device's disk, not the package: keep it for a retry
            raise WriteFailed(exc) from exc
        raise PackageRejected(name, f"archive is truncated or corrupt ({exc})") from exc
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise PackageRejected(name, f"archive is truncated or corrupt ({exc})") from exc


def read_manifest(folder: Path, label: str) -> VersionMeta:
    """The package's meta.yaml: a plain file of at most MAX_MANIFEST_BYTES, parsed (after its signature
    was checked: ``TrustPolicy.check`` comes first)."""
    data = read_capped(folder / META_FILE, MAX_MANIFEST_BYTES, label)
    try:
        return parse_meta(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PackageRejected(label, "meta.yaml is not UTF-8 text") from exc
    except MetaError as exc:
        raise PackageRejected(label, f"meta.yaml: {exc}") from exc


def verify_package(folder: Path, label: str, model: str, config: ModelConfig) -> VersionMeta:
    """The package's meta, once every artifact matches its checksum and the contract fits ``config``."""
    meta = read_manifest(folder, label)
    if meta.model != model:
        raise PackageRejected(label, f"it is for model {meta.model!r}, not {model!r}")
    present = {p.name for p in folder.iterdir() if p.name not in (META_FILE, SIGNATURE_FILE)}
    for path in folder.iterdir():
        if path.is_symlink() or not (path.is_file()):
            raise PackageRejected(label, f"{path.name!r} is not a plain file")
    unlisted = sorted(present - set(meta.artifacts))
    if unlisted:
        raise PackageRejected(label, f"files not listed in meta.yaml: {', '.join(unlisted)}")
    for name, expected in sorted(meta.artifacts.items()):
        path = folder / name
        if "/" in name or name in (".", "..") or not path.is_file():
            raise PackageRejected(label, f"artifact {name!r} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageRejected(
                label, f"artifact {name!r} sha256 {actual[:12]}… does not match meta {expected[:12]}…")
    needed = primary_file(config)
    if needed not in meta.artifacts:
        raise PackageRejected(label, f"the model's backend needs {needed!r}, which the package lacks")
    code = sorted(name for name in meta.artifacts if loadable_code(name, config))
    if code:
        raise PackageRejected(label, f"{', '.join(code)}: code Triton would load that the model's backend "
                                     f"({config.backend or config.platform or 'unknown'}) does not need")
    mismatch = contract_mismatch(meta.contract, contract(config))
    if mismatch:
        raise PackageRejected(label, f"contract does not match the model's config: {mismatch}")
    return meta


def loadable_code(name: str, config: ModelConfig) -> bool:
    """A file Triton (or a backend) would run as code although this model's backend does not need it: shared
    libraries (a TensorRT plugin beside a plan runs with the server's rights) and Python where the backend
    is not python. What the backend opens itself (its primary file) is never that."""
    if name == primary_file(config):
        return False
    if name.endswith(".so") or ".so." in name:
        return True
    return name.endswith(".py") and config.backend != "python"


def contract_mismatch(offered: Contract, expected: Contract) -> str | None:
    """Why ``offered`` cannot stand in for ``expected``, or None when it can."""
    for kind, have, want in (("input", offered.inputs, expected.inputs), ("output", offered.outputs, expected.outputs)):
        have_by_name = {t.name: t for t in have}
        want_by_name = {t.name: t for t in want}
        missing = sorted(set(want_by_name) - set(have_by_name))
        if missing:
            return f"{kind} {', '.join(missing)} missing"
        extra = sorted(set(have_by_name) - set(want_by_name))
        if extra:
            return f"{kind} {', '.join(extra)} not in the config"
        for name, spec in want_by_name.items():
            if have_by_name[name] != spec:
                return f"{kind} {have_by_name[name].describe()} but the config says {spec.describe()}"
    return None
