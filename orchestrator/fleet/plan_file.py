"""A rollout plan on disk: ``PLAN.yaml`` and its signature ``PLAN.yaml.sig`` by a release key.

The release key is not the package-signing key: whoever builds packages cannot, with that key
alone, send one to the fleet, and the controller's own key (which signs each device's desired
state) cannot start a rollout. ``orchestrate fleet sign-plan`` writes the signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.delivery.signing import sign_detached, verify_detached
from orchestrator.errors import PackageRejected, PlanRejected
from orchestrator.fleet.plan import Plan, PlanError, build_plan
from orchestrator.store.atomic import write_atomic

SIGNATURE_SUFFIX = ".sig"
MAX_PLAN_BYTES = 256 * 1024


def signature_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIGNATURE_SUFFIX)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanRejected(str(path), f"cannot read the {what}: {exc.strerror}") from exc
    if len(data) > MAX_PLAN_BYTES:
        raise PlanRejected(str(path), f"the {what} is {len(data)} bytes (limit {MAX_PLAN_BYTES})")
    return data


def parse(data: bytes, source: str) -> tuple[Plan, dict[str, Any]]:
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PlanRejected(source, f"not YAML: {' '.join(str(exc).split())}") from exc
    try:
        return build_plan(raw), raw
    except PlanError as exc:
        raise PlanRejected(source, str(exc)) from exc


def read_signed_plan(path: Path, release_keys: dict[str, Ed25519PublicKey]) -> tuple[Plan, dict[str, Any], bytes, str]:
    """The plan, its raw mapping, the file's bytes and the release key id that signed them."""
    data = _read(path, "plan")
    sig = signature_path(path)
    if not sig.exists():
        raise PlanRejected(str(path), f"unsigned: no {sig.name} (sign it: orchestrate fleet sign-plan {path} "
                                      f"--key RELEASE.key)")
    if not release_keys:
        raise PlanRejected(str(path), "the controller trusts no release key (release_keys in its configuration)")
    try:
        signer = verify_detached(data, _read(sig, "signature"), release_keys, str(path))
    except PackageRejected as exc:
        raise PlanRejected(str(path), exc.reason) from exc
    plan, raw = parse(data, str(path))
    return plan, raw, data, signer


def sign_plan(path: Path, private_key: Path) -> Path:
    """Check the plan builds, then write its signature beside it."""
    data = _read(path, "plan")
    parse(data, str(path))
    sig = signature_path(path)
    write_atomic(sig, sign_detached(data, private_key))
    return sig
