"""Version numbers as users type them (``v4``, ``4``) and as Triton stores them (folder ``4``)."""

from __future__ import annotations

import re

from orchestrator.errors import UsageError

_VERSION = re.compile(r"^[vV]?([1-9][0-9]{0,17})$")


def parse_version(text: str) -> int:
    match = _VERSION.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a version: expected v<N> or <N> with N >= 1")
    return int(match.group(1))


def is_version_folder(name: str) -> bool:
    """Triton treats a folder as a version only when its name is a number without a leading zero."""
    return bool(re.fullmatch(r"[1-9][0-9]{0,17}", name))


def label(version: int | None) -> str:
    return "-" if version is None else f"v{version}"
