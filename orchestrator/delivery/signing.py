"""Signed packages: an Ed25519 signature over the exact bytes of ``meta.yaml``.

``meta.yaml`` lists every artifact's sha256 and ``verify_package`` checks the artifacts
against it, so signing the manifest vouches for the whole package.

Files:

* private key ``NAME.key``: PKCS#8 PEM, unencrypted, mode 0600 (``generate_keypair``);
* public key ``NAME.pub``: SubjectPublicKeyInfo PEM; a device trusts the ``*.pub`` files
  in its trusted-keys folder (``ORCH_TRUSTED_KEYS``, default ``<state_dir>/trusted_keys``);
* signature ``meta.yaml.sig`` beside ``meta.yaml``: one JSON object
  ``{"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64 of 64 bytes>"}``.

The key id is the first 16 hex digits of the sha256 of the raw 32-byte public key. The
signed message is ``meta.yaml`` byte for byte (no prefix), so it can be checked with
``openssl pkeyutl -verify -rawin`` as well.

A signed package whose signature is bad is refused even when unsigned packages are
allowed: a bad signature means tampering, not a development shortcut.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.delivery.archive import (
    MAX_ARCHIVE_FILES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    read_capped,
)
from orchestrator.errors import PackageRejected, UsageError
from orchestrator.store.atomic import fsync_dir, write_atomic
from orchestrator.store.metafile import META_FILE, MetaError, VersionMeta, parse_meta, sha256_file

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
SIGNED_BY = "signed_by"  # the VersionMeta.extra key that records the signer of a filed version
PUBLIC_SUFFIX, PRIVATE_SUFFIX = ".pub", ".key"
_SIGNATURE_BYTES = 64
_KEY_ID_LEN = 16
_CHUNK = 1 << 20


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_LEN]


# --- keys ---------------------------------------------------------------------------------
def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private 0600, public 0644); refuses to overwrite either file. Returns its key id."""
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # O_EXCL + 0600 at creation: the secret is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    public_path.chmod(0o644)
    return key_id(private.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key")
    if path.stat().st_mode & 0o077:
        log.warning("signing key %s is readable by other users; chmod 600 it", path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the public key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"trusted key {path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"trusted key {path} is not an Ed25519 public key")
    return key


def load_trusted_keys(trusted: Path | Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Key id -> key, from a folder of ``*.pub`` files or a list of files; a broken key file is an error."""
    if isinstance(trusted, Path):
        files = sorted(trusted.glob("*" + PUBLIC_SUFFIX)) if trusted.is_dir() else []
    else:
        files = list(trusted)
    return {key_id(key): key for key in map(load_public_key, files)}


def require_distinct_keys(roles: Mapping[str, Mapping[str, Ed25519PublicKey]]) -> None:
    """UsageError when one key is trusted in two roles (role name -> key id -> key): whoever holds it could act
    in both, e.g. a package key's holder approve a rollout of their own package."""
    seen: dict[str, str] = {}
    for role, keys in roles.items():
        for ident in keys:
            other = seen.setdefault(ident, role)
            if other != role:
                raise UsageError(f"key {ident} is trusted both as {other} and as {role}: give each role a key of "
                                 f"its own (orchestrate keygen) and take this one out of one of them")


# --- signing ------------------------------------------------------------------------------
def _signature_document(private: Ed25519PrivateKey, manifest: bytes) -> bytes:
    doc = {"algorithm": ALGORITHM, "key_id": key_id(private.public_key()),
           "signature": base64.b64encode(private.sign(manifest)).decode("ascii")}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _check_manifest(manifest: bytes, digests: Mapping[str, str], where: str) -> None:
    """Refuse to sign a manifest that does not describe the files beside it."""
    try:
        meta = parse_meta(manifest.decode("utf-8"))
    except (MetaError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot sign {where}: meta.yaml: {exc}") from exc
    for name, expected in sorted(meta.artifacts.items()):
        actual = digests.get(name)
        if actual is None:
            raise UsageError(f"cannot sign {where}: artifact {name!r} is missing")
        if actual != expected:
            raise UsageError(f"cannot sign {where}: artifact {name!r} does not match its sha256 in meta.yaml")


def sign_package(folder: Path, private_key_path: Path) -> str:
    """Write ``meta.yaml.sig`` into the package folder; returns the signer's key id."""
    private = load_private_key(private_key_path)
    try:
        manifest = (folder / META_FILE).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot sign {folder}: no readable meta.yaml ({exc.strerror})") from exc
    digests = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file() and p.name != META_FILE}
    _check_manifest(manifest, digests, str(folder))
    write_atomic(folder / SIGNATURE_FILE, _signature_document(private, manifest))
    return key_id(private.public_key())


def sign_detached(data: bytes, private_key_path: Path) -> bytes:
    """A signature document over ``data`` exactly (the format of ``meta.yaml.sig``): rollout plans."""
    return _signature_document(load_private_key(private_key_path), data)


def sign_archive(archive: Path, private_key_path: Path) -> str:
    """Sign a ``.tar.gz`` package in place: the same members plus ``meta.yaml.sig`` beside ``meta.yaml``.

    Members are copied from archive to archive, never extracted, so no path in the archive touches the disk.
    """

    private = load_private_key(private_key_path)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_ARCHIVE_FILES:
                raise UsageError(f"cannot sign {archive}: {len(members)} entries (limit {MAX_ARCHIVE_FILES})")
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise UsageError(f"cannot sign {archive}: entry {member.name!r} is not a plain file or folder")
            metas = [m for m in members if m.isfile() and posixpath.basename(m.name) == META_FILE]
            if len(metas) != 1:
                raise UsageError(f"cannot sign {archive}: expected one meta.yaml, found {len(metas)}")
            top = posixpath.dirname(metas[0].name)
            manifest = _read_member(tar, metas[0])
            digests = {posixpath.basename(m.name): _member_sha256(tar, m) for m in members
                       if m.isfile() and posixpath.dirname(m.name) == top}
            _check_manifest(manifest, digests, str(archive))
            document = _signature_document(private, manifest)
            sig_name = posixpath.join(top, SIGNATURE_FILE)
            _rewrite_archive(archive, tar, [m for m in members if m.name != sig_name], sig_name, document)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UsageError(f"cannot sign {archive}: archive unreadable ({exc})") from exc
    return key_id(private.public_key())


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None  # a regular file always has content
    return handle.read()


def _member_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    assert handle is not None
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _rewrite_archive(archive: Path, source: tarfile.TarFile, members: list[tarfile.TarInfo], sig_name: str,
                     document: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as out:
            for member in members:
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
            info = tarfile.TarInfo(sig_name)
            info.size, info.mode = len(document), 0o644
            out.addfile(info, io.BytesIO(document))
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(archive.parent)


# --- verification -------------------------------------------------------------------------
def _parse_signature(data: bytes, label: str) -> tuple[str, bytes]:
    def malformed(why: str) -> PackageRejected:
        return PackageRejected(label, f"{SIGNATURE_FILE} is malformed: {why}")

    if len(data) > MAX_SIGNATURE_BYTES:
        raise malformed(f"{len(data)} bytes (limit {MAX_SIGNATURE_BYTES})")
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise malformed("not JSON") from exc
    if not isinstance(doc, dict):
        raise malformed("not a JSON object")
    if doc.get("algorithm") != ALGORITHM:
        raise malformed(f"algorithm {doc.get('algorithm')!r}, expected {ALGORITHM!r}")
    signer = doc.get("key_id")
    if not isinstance(signer, str) or len(signer) != _KEY_ID_LEN or not all(c in "0123456789abcdef" for c in signer):
        raise malformed(f"key_id must be {_KEY_ID_LEN} lower-case hex digits")
    try:
        signature = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise malformed("signature is not base64") from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise malformed(f"signature is {len(signature)} bytes, an Ed25519 signature is {_SIGNATURE_BYTES}")
    return signer, signature


def verify_signature(folder: Path, trusted: Path | Iterable[Path] | Mapping[str, Ed25519PublicKey],
                     label: str | None = None) -> str:
    """The key id that signed the package's ``meta.yaml``; ``PackageRejected`` unless it is a trusted key.

    ``trusted``: a folder of ``*.pub`` files, a list of such files, or key id -> key.
    """
    label = label or str(folder)
    keys = trusted if isinstance(trusted, Mapping) else load_trusted_keys(trusted)
    where = f" in {trusted}" if isinstance(trusted, Path) else ""
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.exists() and not sig_path.is_symlink():
        raise PackageRejected(label, f"unsigned: no {SIGNATURE_FILE}")
    signer, signature = _parse_signature(read_capped(sig_path, MAX_SIGNATURE_BYTES, label), label)
    manifest = read_capped(folder / META_FILE, MAX_MANIFEST_BYTES, label)
    key = keys.get(signer)
    if key is None:
        known = f"trusted keys{where}: {', '.join(sorted(keys))}" if keys else f"no trusted keys{where}"
        raise PackageRejected(label, f"signed by unknown key {signer} ({known})")
    try:
        key.verify(signature, manifest)
    except InvalidSignature as exc:
        raise PackageRejected(label, f"signature by key {signer} does not match meta.yaml "
                                     f"(meta.yaml altered after signing?)") from exc
    return signer


def verify_detached(data: bytes, signature: bytes, keys: Mapping[str, Ed25519PublicKey], label: str) -> str:
    """The key id among ``keys`` whose signature document ``signature`` covers ``data``; PackageRejected if none."""
    signer, raw = _parse_signature(signature, label)
    key = keys.get(signer)
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        raise PackageRejected(label, f"signed by unknown key {signer} (trusted: {known})")
    try:
        key.verify(raw, data)
    except InvalidSignature as exc:
        raise PackageRejected(label, f"signature by key {signer} does not match (altered after signing?)") from exc
    return signer


def record_signer(meta: VersionMeta, signer: str | None) -> VersionMeta:
    """``meta`` carrying who signed it; a ``signed_by`` the package wrote about itself is dropped."""
    extra = {k: v for k, v in meta.extra.items() if k != SIGNED_BY}
    if signer is not None:
        extra[SIGNED_BY] = signer
    return replace(meta, extra=extra)
