"""Per-model policy: ``<state>/<model>/policy.yaml``, every field optional.

The ``watch:`` section is documented in ``orchestrator/watch/rules.py``. The promotion
section:

Defaults (what an operator gets with no file):

    promotion:
      warmup_requests: 5      # golden batches sent to a candidate before it is judged
      output_bound: 1.0e6     # an output with |x| above this is "exploding"
      max_score_drop: 0.0     # candidate golden accuracy may trail the served one by this much
      min_score: 0.0          # and must reach at least this
      keep_resident: 1        # verified fallbacks kept loaded below the served version
      golden: golden          # folder (relative to the model) with inputs.npy and labels.npy
      batch_size: 8           # golden inputs per request
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.rules import WatchPolicy, parse_watch_policy
from orchestrator.errors import RepositoryCorrupt

POLICY_FILE = "policy.yaml"


@dataclass(frozen=True)
class PromotionPolicy:
    warmup_requests: int = 5
    output_bound: float = 1.0e6
    max_score_drop: float = 0.0
    min_score: float = 0.0
    keep_resident: int = 1
    golden: str = "golden"
    batch_size: int = 8

    def __post_init__(self) -> None:
        problems = []
        if self.warmup_requests < 0:
            problems.append("warmup_requests must be >= 0")
        if not (self.output_bound > 0 and math.isfinite(self.output_bound)):
            problems.append("output_bound must be a positive number")
        if not 0 <= self.max_score_drop <= 1:
            problems.append("max_score_drop must be within 0..1")
        if not 0 <= self.min_score <= 1:
            problems.append("min_score must be within 0..1")
        if self.keep_resident < 0:
            problems.append("keep_resident must be >= 0")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise RepositoryCorrupt(f"{where} must be a mapping")
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise RepositoryCorrupt(f"{where}: unknown setting(s) {', '.join(unknown)}")
    values = {}
    for name, value in raw.items():
        kind = type(defaults[name])
        try:
            # YAML 1.1 reads "1.0e4" as a string: coerce to the field's type.
            values[name] = kind(value) if kind is not bool else bool(value)
        except (TypeError, ValueError):
            raise RepositoryCorrupt(f"{where}: {name} must be a {kind.__name__}, not {value!r}") from None
    try:
        return cls(**values)
    except ValueError as exc:
        raise RepositoryCorrupt(f"{where}: {exc}") from exc


def _read(state_folder: Path) -> tuple[Path, dict[str, Any]]:
    path = state_folder / POLICY_FILE
    if not path.exists():
        return path, {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RepositoryCorrupt(f"{path} is unreadable: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise RepositoryCorrupt(f"{path} must be a mapping")
    return path, raw


def load_promotion_policy(state_folder: Path) -> PromotionPolicy:
    path, raw = _read(state_folder)
    return _build(PromotionPolicy, raw.get("promotion"), f"{path} promotion")


def load_watch_policy(state_folder: Path) -> WatchPolicy:
    path, raw = _read(state_folder)
    try:
        return parse_watch_policy(raw.get("watch"))
    except (TypeError, ValueError) as exc:
        raise RepositoryCorrupt(f"{path} watch: {exc}") from exc
