"""``<state>/<model>/policy.yaml``: read once, built by ``core.policy.build_policies``.

The sections and their defaults are documented in ``core/policy.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.policy import Policies, PolicyError, build_policies
from orchestrator.errors import RepositoryCorrupt

POLICY_FILE = "policy.yaml"
# libyaml where it is built in: the pure-Python parser takes ~5 ms of every command for this small file.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_raw(state_folder: Path) -> tuple[Path, dict[str, Any]]:
    path = state_folder / POLICY_FILE
    if not path.exists():
        return path, {}
    try:
        raw = yaml.load(path.read_text(), Loader=_LOADER) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RepositoryCorrupt(f"{path} is unreadable: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise RepositoryCorrupt(f"{path} must be a mapping")
    return path, raw


def read_policies(state_folder: Path) -> Policies:
    """Every section; RepositoryCorrupt names the file, the section and the setting."""
    path, raw = read_raw(state_folder)
    try:
        return build_policies(raw, str(path))
    except PolicyError as exc:
        raise RepositoryCorrupt(str(exc)) from exc
