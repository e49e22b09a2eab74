"""``meta.yaml``: what a model version is (artifacts, contract, provenance) and how it was verified.

The identity part (artifacts and their sha256, contract, provenance) never changes once a
version is filed; only the ``verification`` block is updated, atomically.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.model import Contract, TensorSpec, Verification, VersionMeta, VersionStatus
from orchestrator.store.atomic import write_atomic

META_FILE = "meta.yaml"
# libyaml where the wheel has it: the same safe loader, about 10x faster on every status and rollback.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CHUNK = 1 << 20


class MetaError(ValueError):
    """meta.yaml is missing, unreadable or incomplete; callers wrap it in their own error."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tensors(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise MetaError(f"contract.{where} must be a non-empty list")
    specs = []
    for item in raw:
        try:
            specs.append(
                TensorSpec(str(item["name"]), str(item["datatype"]).upper(), tuple(int(d) for d in item["dims"]))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetaError(f"contract.{where} entry {item!r} needs name, datatype and dims") from exc
    return tuple(specs)


def _verification(raw: Any) -> Verification:
    if raw is None:
        return Verification()
    if not isinstance(raw, dict):
        raise MetaError("verification must be a mapping")
    try:
        status = VersionStatus(raw.get("status", "unverified"))
    except ValueError as exc:
        raise MetaError(f"verification.status {raw.get('status')!r} is not one of "
                        f"{', '.join(s.value for s in VersionStatus)}") from exc
    golden = raw.get("golden") or {}
    return Verification(
        status=status,
        verified_by=raw.get("verified_by"),
        verified_at=raw.get("verified_at"),
        golden={str(k): float(v) for k, v in golden.items()},
        reason=raw.get("reason"),
    )


_KNOWN = {"model", "version", "artifacts", "contract", "framework", "target_device", "source",
          "created_at", "filed_at", "verification", "verified", "verified_by", "verified_at"}


_DECIMAL = re.compile(r"0|[1-9][0-9]*")
MAX_VERSION = 999_999_999  # version folders are numbers Triton reads as int64; far below, and documented


def parse_meta(text: str) -> VersionMeta:
    """A meta.yaml; anything in it of the wrong shape is a MetaError naming the field, never another error."""
    try:
        return _parse_meta(text)
    except MetaError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MetaError(f"a field has the wrong type ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc


def _load_yaml(text: str) -> Any:
    """The document, parsed once: its node tree checked (``_check_nodes``), then built."""
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        _check_nodes(root)
        return loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node | None) -> None:
    """What YAML allows and a manifest must not use: aliases (a few lines that expand into gigabytes),
    and a version in any form but plain decimal (YAML 1.1 reads ``010`` as 8 and ``0x10`` as 16)."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise MetaError("YAML aliases (*name) are not allowed in a manifest")
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "version" and isinstance(value, yaml.ScalarNode) \
                    and value.tag.endswith(":int") and not _DECIMAL.fullmatch(value.value):
                raise MetaError(f"version {value.value!r} must be written as a plain decimal number")


def _parse_meta(text: str) -> VersionMeta:
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise MetaError(f"not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise MetaError("must be a YAML mapping")
    for key in ("model", "artifacts", "contract"):
        if key not in raw:
            raise MetaError(f"missing field {key!r}")
    artifacts = raw["artifacts"]
    if not isinstance(artifacts, dict) or not artifacts:
        raise MetaError("artifacts must map each file name to its sha256")
    checksums: dict[str, str] = {}
    for name, value in artifacts.items():
        digest = value.get("sha256") if isinstance(value, dict) else value
        if not isinstance(digest, str) or len(digest) != 64:
            raise MetaError(f"artifact {name!r} has no valid sha256")
        checksums[str(name)] = digest.lower()
    contract = raw["contract"]
    if not isinstance(contract, dict):
        raise MetaError("contract must have inputs and outputs")
    version = raw.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= MAX_VERSION):
        raise MetaError(f"version {version!r} must be a whole number from 1 to {MAX_VERSION:,}")
    framework = raw.get("framework") or {}
    if not isinstance(framework, dict):
        raise MetaError(f"framework must map names to versions, not {framework!r}")
    return VersionMeta(
        model=str(raw["model"]),
        version=version,
        artifacts=checksums,
        contract=Contract(_tensors(contract.get("inputs"), "inputs"), _tensors(contract.get("outputs"), "outputs")),
        framework={str(k): str(v) for k, v in framework.items()},
        target_device=str(raw.get("target_device", "cpu")),
        source=str(raw.get("source", "")),
        created_at=str(raw.get("created_at", "")),
        filed_at=str(raw.get("filed_at", "")),
        verification=_verification(raw.get("verification")),
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
    )


def read_meta(path: Path) -> VersionMeta:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MetaError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_meta(text)


def _tensor_dicts(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "dims": list(s.dims)} for s in specs]


def render_meta(meta: VersionMeta) -> str:
    """A version's meta.yaml as filed. Verification lives in the state folder's attestation; only a
    meta.yaml written before attestations (the sample's v1) carries one, and keeps it."""
    v = meta.verification
    doc: dict[str, Any] = {
        "model": meta.model,
        "version": meta.version,
        "artifacts": {name: {"sha256": digest} for name, digest in sorted(meta.artifacts.items())},
        "contract": {"inputs": _tensor_dicts(meta.contract.inputs), "outputs": _tensor_dicts(meta.contract.outputs)},
        "framework": dict(meta.framework),
        "target_device": meta.target_device,
        "source": meta.source,
        "created_at": meta.created_at,
        "filed_at": meta.filed_at,
        # Flat fields for readers that expect the seeds' layout; the block below is authoritative.
        "verified": v.verified,
        "verified_by": v.verified_by,
        "verified_at": v.verified_at,
        "verification": {
            "status": v.status.value,
            "verified_by": v.verified_by,
            "verified_at": v.verified_at,
            "golden": dict(v.golden),
            "reason": v.reason,
        },
        **meta.extra,
    }
    if v == Verification():
        for key in ("verified", "verified_by", "verified_at", "verification"):
            del doc[key]
    if meta.version is None:
        del doc["version"]
    if not meta.filed_at:
        del doc["filed_at"]
    return yaml.safe_dump(doc, sort_keys=False)


def write_meta(path: Path, meta: VersionMeta) -> None:
    write_atomic(path, render_meta(meta))


__all__ = ["META_FILE", "Contract", "MetaError", "TensorSpec", "Verification", "VersionMeta", "VersionStatus",
           "parse_meta", "read_meta", "render_meta", "sha256_file", "write_meta"]
