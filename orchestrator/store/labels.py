"""A model's version labels: ``<state>/<model>/labels.json`` (``{"stable": 2, "canary": 3}``), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic

LABELS_FILE = "labels.json"


def read_labels(state: Path) -> dict[str, int]:
    path = state / LABELS_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RepositoryCorrupt(f"{path} is unreadable ({exc}): fix or remove it; `orchestrate label` rewrites "
                                f"it") from exc
    if not isinstance(raw, dict) or not all(isinstance(k, str) and type(v) is int and v > 0 for k, v in raw.items()):
        raise RepositoryCorrupt(f"{path} is not a map of label names to version numbers")
    return dict(sorted(raw.items()))


def write_labels(state: Path, labels: dict[str, int]) -> None:
    write_atomic(state / LABELS_FILE, json.dumps(dict(sorted(labels.items())), indent=2) + "\n")
