"""Per-version attestations: ``<state>/<model>/attestations/<N>.json``, each replaced atomically.

A version's verification (status, by whom, when, golden metrics, reason: verified, failed,
rolled back, quarantined) and its last shadow run live here, not in its ``meta.yaml``, which
stays as it was filed. A repository from before attestations carries them in ``meta.yaml``:
they are read from there until the first write, which carries them over (the migration).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.core.model import Attestation, Verification, VersionMeta, VersionStatus
from orchestrator.core.shadow_gate import META_KEY
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic

ATTESTATIONS_DIR = "attestations"


def attestation_path(state_folder: Path, version: int) -> Path:
    return state_folder / ATTESTATIONS_DIR / f"{version}.json"


def read_attestation(state_folder: Path, version: int, meta: VersionMeta) -> Attestation:
    """The version's attestation; the legacy one in ``meta`` when none was written for this filing."""
    path = attestation_path(state_folder, version)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return legacy(meta)
    except OSError as exc:
        raise RepositoryCorrupt(f"{path}: {exc.strerror}") from exc
    try:
        attestation = _from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RepositoryCorrupt(f"{path} is unreadable: {exc}") from exc
    if attestation.filed_at != meta.filed_at:
        return legacy(meta)  # written for an earlier filing of this version number
    return attestation


def legacy(meta: VersionMeta) -> Attestation:
    shadow = meta.extra.get(META_KEY)
    return Attestation(meta.verification, shadow if isinstance(shadow, dict) else None, meta.filed_at)


def write_attestation(state_folder: Path, version: int, attestation: Attestation) -> None:
    folder = state_folder / ATTESTATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(attestation_path(state_folder, version), json.dumps(_to_dict(attestation), indent=2,
                                                                    sort_keys=True))


def forget_attestation(state_folder: Path, version: int) -> None:
    """A version filed anew under this number starts unverified."""
    attestation_path(state_folder, version).unlink(missing_ok=True)


def _to_dict(attestation: Attestation) -> dict[str, Any]:
    v = attestation.verification
    return {"filed_at": attestation.filed_at, "shadow": attestation.shadow,
            "footprint_bytes": attestation.footprint_bytes, "load_failures": attestation.load_failures,
            "verification": {"status": v.status.value, "verified_by": v.verified_by, "verified_at": v.verified_at,
                             "golden": dict(v.golden), "reason": v.reason}}


def _from_dict(raw: dict[str, Any]) -> Attestation:
    v = raw["verification"]
    verification = Verification(status=VersionStatus(v["status"]), verified_by=v.get("verified_by"),
                                verified_at=v.get("verified_at"),
                                golden={str(k): float(x) for k, x in (v.get("golden") or {}).items()},
                                reason=v.get("reason"))
    shadow = raw.get("shadow")
    footprint = raw.get("footprint_bytes")
    return Attestation(verification, shadow if isinstance(shadow, dict) else None, str(raw.get("filed_at", "")),
                       None if footprint is None else int(footprint), int(raw.get("load_failures", 0)))
