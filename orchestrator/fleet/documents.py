"""Signed fleet documents: a device's desired state and the fleet-wide notice, signed by the controller's key.

On the wire a document is one JSON object ``{"doc": {...}, "key_id": "<16 hex>", "sig": "<base64>"}``;
the signature is Ed25519 over the canonical JSON of ``doc`` (sorted keys, no spaces, UTF-8), so any
re-encoding by a broker or a bridge cannot change what was signed. The controller's key is not the
package-signing key and not the release key that signs rollout plans. Devices never see a plan's
release signature, so a stolen controller key can make them install any package a trusted package key
signed (or revert), but never one nobody signed: each package is still checked against the device's
trusted package keys on import, and the local gates still judge it.

A device accepts a desired document only when it is signed by a key it trusts for the controller
role, addressed to it, numbered above the last one it applied and not expired; every other one is a
refusal with a reason from ``REFUSALS``, journaled by the agent.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.delivery.signing import key_id
from orchestrator.errors import DocumentRefused

MAX_DOCUMENT_BYTES = 64 * 1024
# Why a device turned a document away: a closed set, counted and journaled.
MALFORMED, UNSIGNED, UNTRUSTED, FORGED, MISADDRESSED, REPLAYED, EXPIRED = (
    "malformed", "unsigned", "untrusted key", "bad signature", "misaddressed", "replayed", "expired")
REFUSALS = (MALFORMED, UNSIGNED, UNTRUSTED, FORGED, MISADDRESSED, REPLAYED, EXPIRED)

INSTALL, REVERT = "install", "revert"
INTENTS = (INSTALL, REVERT)


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def seal(doc: Mapping[str, Any], private: Ed25519PrivateKey) -> bytes:
    """The wire form of ``doc`` signed by ``private``."""
    envelope = {"doc": doc, "key_id": key_id(private.public_key()),
                "sig": base64.b64encode(private.sign(canonical(doc))).decode("ascii")}
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def open_sealed(data: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The document inside ``data`` once its signature checks out against a ``trusted`` key."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentRefused(MALFORMED, f"{len(data)} bytes (limit {MAX_DOCUMENT_BYTES})")
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DocumentRefused(MALFORMED, "not JSON") from exc
    if not isinstance(envelope, dict) or not isinstance(envelope.get("doc"), dict):
        raise DocumentRefused(MALFORMED, "not a signed document (no doc object)")
    if "sig" not in envelope or "key_id" not in envelope:
        raise DocumentRefused(UNSIGNED, "no signature")
    signer = envelope["key_id"]
    key = trusted.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise DocumentRefused(UNTRUSTED, f"signed by key {signer!r}, which this device does not trust for "
                                         f"the controller")
    try:
        signature = base64.b64decode(str(envelope["sig"]), validate=True)
        key.verify(signature, canonical(envelope["doc"]))
    except (binascii.Error, ValueError, InvalidSignature) as exc:
        raise DocumentRefused(FORGED, f"signature by key {signer} does not match the document") from exc
    return envelope["doc"]


@dataclass(frozen=True)
class PackageRef:
    url: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"url": self.url, "sha256": self.sha256}


@dataclass(frozen=True)
class Desired:
    """What one device should serve for one model, from the controller.

    ``install``: fetch ``package`` (if this device has not imported it), import and promote it through
    the local gates, bake ``bake_s``, then report it verified. ``revert``: serve ``revert_to`` (a
    version number of this device's, read from its own report) through the rollback use case, and
    refuse ``package`` until a newer document says otherwise.
    """

    device: str
    serial: int  # strictly increasing per device; a device refuses one not above the last it applied
    issued_at: float  # seconds since the epoch
    expires_at: float
    model: str
    intent: str
    package: PackageRef
    rollout: str
    bake_s: float = 0.0
    revert_to: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": "desired", "device": self.device, "serial": self.serial,
                               "issued_at": self.issued_at, "expires_at": self.expires_at, "model": self.model,
                               "intent": self.intent, "package": self.package.to_json(), "rollout": self.rollout,
                               "bake_s": self.bake_s}
        if self.revert_to is not None:
            doc["revert_to"] = self.revert_to
        return doc


@dataclass(frozen=True)
class Block:
    """A version refused on the devices whose labels match ``selector`` (every key equal)."""

    id: str
    model: str
    sha256: str
    selector: Mapping[str, str]
    reason: str

    def applies_to(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.selector.items())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "sha256": self.sha256, "selector": dict(self.selector),
                "reason": self.reason}


@dataclass(frozen=True)
class Notice:
    """Every block in force, fleet-wide, in one retained document (a topic keeps one message)."""

    serial: int
    issued_at: float
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "notice", "serial": self.serial, "issued_at": self.issued_at,
                "blocks": [b.to_json() for b in self.blocks]}


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DocumentRefused(MALFORMED, f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DocumentRefused(MALFORMED, f"field {name!r} is not finite")
    return value


def parse_desired(doc: Mapping[str, Any]) -> Desired:
    if doc.get("kind") != "desired":
        raise DocumentRefused(MALFORMED, f"a {doc.get('kind')!r} document where a desired state belongs")
    intent = _field(doc, "intent", str)
    if intent not in INTENTS:
        raise DocumentRefused(MALFORMED, f"intent {intent!r} (known: {', '.join(INTENTS)})")
    package = _field(doc, "package", dict)
    revert_to = doc.get("revert_to")
    if intent == REVERT and (not isinstance(revert_to, int) or isinstance(revert_to, bool) or revert_to < 1):
        raise DocumentRefused(MALFORMED, "a revert names no version to serve (revert_to)")
    return Desired(device=_field(doc, "device", str), serial=_field(doc, "serial", int),
                   issued_at=float(_field(doc, "issued_at", (int, float))),
                   expires_at=float(_field(doc, "expires_at", (int, float))), model=_field(doc, "model", str),
                   intent=intent, package=PackageRef(_field(package, "url", str), _field(package, "sha256", str)),
                   rollout=_field(doc, "rollout", str), bake_s=float(_field(doc, "bake_s", (int, float))),
                   revert_to=revert_to if intent == REVERT else None)


def accept_desired(doc: Mapping[str, Any], device: str, last_serial: int, now: float) -> Desired:
    """``doc`` as a ``Desired`` this device may apply; ``DocumentRefused`` naming why not."""
    desired = parse_desired(doc)
    if desired.device != device:
        raise DocumentRefused(MISADDRESSED, f"addressed to {desired.device!r}, this device is {device!r}")
    if desired.serial <= last_serial:
        raise DocumentRefused(REPLAYED, f"serial {desired.serial}, this device already applied {last_serial}")
    if now >= desired.expires_at:
        raise DocumentRefused(EXPIRED, f"expired {now - desired.expires_at:.0f} s ago "
                                       f"(issued for rollout {desired.rollout})")
    return desired


def parse_notice(doc: Mapping[str, Any]) -> Notice:
    if doc.get("kind") != "notice":
        raise DocumentRefused(MALFORMED, f"a {doc.get('kind')!r} document where a fleet notice belongs")
    blocks = []
    for raw in _field(doc, "blocks", list):
        if not isinstance(raw, dict):
            raise DocumentRefused(MALFORMED, "a block is not an object")
        selector = _field(raw, "selector", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            raise DocumentRefused(MALFORMED, "a block's selector is not label -> value strings")
        blocks.append(Block(_field(raw, "id", str), _field(raw, "model", str), _field(raw, "sha256", str),
                            dict(selector), str(raw.get("reason", ""))))
    return Notice(_field(doc, "serial", int), float(_field(doc, "issued_at", (int, float))), tuple(blocks))


def accept_notice(doc: Mapping[str, Any], last_serial: int) -> Notice:
    notice = parse_notice(doc)
    if notice.serial < last_serial:
        raise DocumentRefused(REPLAYED, f"notice {notice.serial}, this device already holds {last_serial}")
    return notice
