"""Whether an operator paused the watcher's automatic rollback of a model: ``<state>/<model>/paused.json``.

The file's presence is the pause; it names who, when and why. The watcher reads it every tick
(one ``stat`` when there is none), so a pause takes effect at the next check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import fsync_dir, planted_link, write_atomic

PAUSE_FILE = "paused.json"


@dataclass(frozen=True)
class Pause:
    by: str
    at: str  # ISO time, UTC
    reason: str


def read_pause(state: Path) -> Pause | None:
    path = state / PAUSE_FILE
    try:
        raw = json.loads(path.read_text())
        return Pause(str(raw["by"]), str(raw["at"]), str(raw.get("reason", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Unreadable is still paused: an operator meant to stop automatic rollbacks.
        raise RepositoryCorrupt(f"{path} is unreadable ({exc}); `orchestrate resume` removes it") from exc


def pause_in_effect(state: Path) -> dict[str, str] | None:
    """The pause as the watcher and `status` see it: who, when, why; an unreadable file is a pause too
    (someone meant to stop automatic rollbacks), its error as the reason."""
    try:
        found = read_pause(state)
    except RepositoryCorrupt as exc:
        return {"by": "?", "at": "?", "reason": str(exc)}
    return asdict(found) if found is not None else None


def write_pause(state: Path, pause: Pause) -> None:
    write_atomic(state / PAUSE_FILE, json.dumps(asdict(pause), indent=2) + "\n")


def remove_pause(state: Path) -> bool:
    """True when there was a pause to remove."""
    path = state / PAUSE_FILE
    if path.is_symlink():
        raise planted_link(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(state)
    return True
