"""Baselines the watcher learns per version, in the state folder (rewritten atomically).

    <state>/<model>/latency_baseline.json   version -> average latency in us (EWMA while healthy)
    <state>/<model>/drift_baseline.json     version -> drift baseline of its production outputs

A lost or damaged file is recorded again; it never stops the watcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.policy import Drift
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic
from orchestrator.store.policyfile import read_policies
from orchestrator.store.repository import ModelStore

if TYPE_CHECKING:  # core.drift computes with numpy: `status` reads only counts and keys
    from orchestrator.core.drift import Baseline

LATENCY_BASELINE_FILE = "latency_baseline.json"
DRIFT_BASELINE_FILE = "drift_baseline.json"


def read_latency_baselines(state_folder: Path) -> dict[str, float]:
    try:
        raw = json.loads((state_folder / LATENCY_BASELINE_FILE).read_text())
        return {str(k): float(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def write_latency_baselines(state_folder: Path, baselines: dict[str, float]) -> None:
    write_atomic(state_folder / LATENCY_BASELINE_FILE, json.dumps(baselines, sort_keys=True))


def write_drift_baselines(state_folder: Path, baselines: dict[str, Baseline], versions: list[int]) -> None:
    """Only versions still in the repository are kept."""
    known = {str(v) for v in versions}
    write_atomic(state_folder / DRIFT_BASELINE_FILE, json.dumps(
        {k: b.to_dict() for k, b in baselines.items() if k in known}, sort_keys=True))


def read_drift_baselines(state_folder: Path) -> dict[str, Baseline]:
    """Version (as text) -> its drift baseline, from ``drift_baseline.json``."""
    from orchestrator.core.drift import Baseline  # noqa: PLC0415 - numpy, for the watcher only

    try:
        return {k: Baseline.from_dict(v) for k, v in _raw_drift_baselines(state_folder).items()}
    except (ValueError, AttributeError, KeyError, TypeError):
        return {}  # a damaged file: baselines are recorded again


def _raw_drift_baselines(state_folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((state_folder / DRIFT_BASELINE_FILE).read_text())
    except (OSError, ValueError):
        return {}  # a lost or damaged file: baselines are recorded again
    return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


def drift_progress(store: ModelStore) -> dict[int, str]:
    """Version -> "recorded/needed" windows of its drift baseline under the current policy ({} when drift is off)."""
    try:
        rule = read_policies(store.state).watch.rules.get("drift")
        outputs = [t.name for t in store.config().output]
    except RepositoryCorrupt:
        return {}
    if not isinstance(rule, Drift) or not rule.sampling or not outputs:
        return {}
    key = rule.baseline_key(outputs)
    progress = {}
    for version, raw in _raw_drift_baselines(store.state).items():
        if version.isdigit() and isinstance(raw, dict) and raw.get("key") == key:
            windows = raw.get("windows")
            if isinstance(windows, int):
                progress[int(version)] = f"{min(windows, rule.baseline_windows)}/{rule.baseline_windows}"
    return progress
