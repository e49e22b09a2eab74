"""Baselines the watcher learns per version, in the state folder (rewritten atomically).

    <state>/<model>/latency_baseline.json   version -> average latency in us (EWMA while healthy)
    <state>/<model>/drift_baseline.json     version -> drift baseline of its production outputs

A lost or damaged file is recorded again; it never stops the watcher.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.policy import DETECTIONS, Drift
from orchestrator.errors import PolicyViolation, RepositoryCorrupt
from orchestrator.store.atomic import write_atomic
from orchestrator.store.snapshot import ModelSnapshot

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


def drift_classes(rule: Drift, snap: ModelSnapshot) -> int:
    """The classes a detections rule gives a share each: its own setting, else as many as the golden set's truth
    names (0 when neither says)."""
    if rule.classes:
        return rule.classes
    from orchestrator.store.golden import truth_classes  # noqa: PLC0415 - numpy: `status` starts without it

    return truth_classes(snap.state / snap.policies.promotion.golden) or 0


def drift_progress(snap: ModelSnapshot) -> dict[int, str]:
    """Version -> "recorded/needed" windows of its drift baseline under the current policy ({} when drift is off)."""
    try:
        rule = snap.policies.watch.rules.get("drift")
        if not isinstance(rule, Drift) or not rule.sampling:
            return {}
        outputs = snap.client_outputs  # what the watcher samples: the route's, behind an ensemble
        if rule.statistic == DETECTIONS:
            rule = replace(rule, classes=drift_classes(rule, snap))
    except (RepositoryCorrupt, PolicyViolation):
        return {}
    if not outputs:
        return {}
    key = rule.baseline_key(outputs)
    progress = {}
    for version, raw in _raw_drift_baselines(snap.state).items():
        if version.isdigit() and isinstance(raw, dict) and raw.get("key") == key:
            windows = raw.get("windows")
            if isinstance(windows, int):
                progress[int(version)] = f"{min(windows, rule.baseline_windows)}/{rule.baseline_windows}"
    return progress
