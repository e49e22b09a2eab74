"""A rollout plan: which package goes to which devices, in which waves, held to which gates.

Built from the plan file's mapping (``plan_file.py`` reads and checks its release signature);
pure, no I/O. Every setting is checked once here, with the key's path in the message, and an
unknown key is an error (a misspelt ``min_sample`` must not silently become no minimum).

    rollout: classifier-v2-plant1          # id, unique in the controller's store
    model: classifier
    package: {url: https://.../classifier-v2.tar.gz, sha256: 9f86...}
    selector: {site: plant-1}              # which devices (label -> value or list of values)
    spread: [site, hw]                     # each wave takes its share of every group of these labels
    defaults: {bake_s: 86400, min_devices: 1, max_unavailable: 10%}
    waves:
      - {name: canary, selector: {role: canary}}
      - {percent: 30}
      - {percent: 60, approval: true}
      - {percent: 100, bake_s: 3600}
    deadlines: {ack_s: 600, install_s: 1800, verify_slack_s: 600, revert_s: 900}
    gates:
      - {name: verified, metric: verified_ratio, min: 0.95}
      - {name: quality, metric: golden_diff, min: -0.03, min_sample: 3}
      - {name: errors, metric: error_rate, max: 0.002, min_sample: 1000}
      - {name: errors-vs-rest, metric: error_rate, compare: control, max_ratio: 1.5, min_sample: 1000}
    on_label_failure: propose              # or block: block the label and go on without asking

Waves are cumulative: ``percent: 30`` means 30 % of the selected devices have been told once the
wave starts (the canary's devices count towards it). The last wave must reach every selected
device (``percent: 100``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.fleet.documents import PackageRef

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# metric -> (direction the gate may bound, what its sample counts)
METRICS: dict[str, tuple[str, str]] = {
    "verified_ratio": ("min", "devices"),  # verified devices / devices of the waves so far
    "failure_ratio": ("max", "devices"),  # failed (refused, rolled back, silent) / devices told
    "rollbacks": ("max", "devices"),  # automatic rollbacks of the new version, summed
    "error_rate": ("max", "requests"),  # failed / all requests to the new version, summed counters
    "latency_ms": ("max", "requests"),  # mean request time inside Triton, summed counters
    "golden_diff": ("min", "devices"),  # golden score of the new version minus the one it replaced
}
# What a device serving the old version reports too: the only metrics a control group can be compared on.
COMPARABLE = ("error_rate", "latency_ms")
ON_LABEL_FAILURE = ("propose", "block")
DEFAULT_GATES = ({"name": "verified", "metric": "verified_ratio", "min": 1.0},)


class PlanError(ValueError):
    """A setting of the plan; ``plan_file`` turns it into ``PlanRejected``."""


@dataclass(frozen=True)
class Selector:
    """Label -> accepted values; a device matches when every key has one of its values."""

    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) in values for key, values in self.labels)

    def __str__(self) -> str:
        return ",".join(f"{k}={'|'.join(v)}" for k, v in self.labels) or "every device"


@dataclass(frozen=True)
class Wave:
    name: str
    percent: float | None  # cumulative share of the selected devices, or
    selector: Selector | None  # every selected device matching this selector (a canary group)
    bake_s: float
    min_devices: int
    approval: bool  # wait for `fleet rollout resume` before this wave starts
    max_unavailable: float  # devices installing at once: a count, or a share of the wave when below 1


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    min: float | None = None
    max: float | None = None
    min_sample: int = 1
    compare: str | None = None  # "control": against not-yet-updated devices with the same labels
    max_ratio: float | None = None

    def describe(self) -> str:
        if self.compare:
            return f"{self.metric} <= {self.max_ratio:g}x the control group's"
        bound = f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"
        return f"{self.metric} {bound}"


@dataclass(frozen=True)
class Deadlines:
    ack_s: float = 600.0  # told -> the device says it is applying
    install_s: float = 1800.0  # applying -> serving the new version (fetch, import, local gates)
    verify_slack_s: float = 600.0  # serving -> verified: bake_s plus this
    revert_s: float = 900.0  # told to revert -> serving the old version again


@dataclass(frozen=True)
class Plan:
    id: str
    model: str
    package: PackageRef
    selector: Selector
    waves: tuple[Wave, ...]
    gates: tuple[Gate, ...]
    spread: tuple[str, ...] = ()
    deadlines: Deadlines = Deadlines()
    on_label_failure: str = "propose"
    document_ttl_s: float = 7 * 86400.0  # a desired document expires this long after it is issued


def _keys(raw: Mapping[str, Any], where: str, known: set[str], required: frozenset[str] = frozenset()) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    missing = sorted(required - set(raw))
    if missing:
        raise PlanError(f"{where}: {missing[0]!r} is required")


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise PlanError(f"{where} must be a mapping")
    return raw


def _number(raw: Any, where: str, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not low <= raw <= high:
        raise PlanError(f"{where} must be a number from {low:g} to {high:g}, not {raw!r}")
    return float(raw)


def _count(raw: Any, where: str, low: int = 0) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
        raise PlanError(f"{where} must be a whole number >= {low}, not {raw!r}")
    return raw


def _name(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _ID.match(raw):
        raise PlanError(f"{where} must be a name of letters, digits, '.', '_' or '-' (at most 64), not {raw!r}")
    return raw


def build_selector(raw: Any, where: str) -> Selector:
    labels = []
    for key, value in sorted(_mapping(raw, where).items()):
        values = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or not values or not all(isinstance(v, (str, int)) for v in values):
            raise PlanError(f"{where}.{key}: a label value or a list of them")
        labels.append((key, tuple(str(v) for v in values)))
    return Selector(tuple(labels))


def _unavailable(raw: Any, where: str) -> float:
    if isinstance(raw, str) and raw.endswith("%"):
        try:
            share = float(raw[:-1]) / 100.0
        except ValueError:
            raise PlanError(f"{where} must be a count or a percentage like '10%', not {raw!r}") from None
        if not 0.0 < share <= 1.0:
            raise PlanError(f"{where}: a percentage above 0 and at most 100")
        return min(share, 0.999999)  # below 1: a share of the wave
    return float(_count(raw, where, low=1))


_WAVE_KEYS = {"name", "percent", "selector", "bake_s", "min_devices", "approval", "max_unavailable"}
_DEFAULTS = {"bake_s": 3600.0, "min_devices": 1, "approval": False, "max_unavailable": "10%"}


def _wave(raw: Any, index: int, defaults: Mapping[str, Any]) -> Wave:
    where = f"waves[{index}]"
    wave = _mapping(raw, where)
    _keys(wave, where, _WAVE_KEYS)
    if ("percent" in wave) == ("selector" in wave):
        raise PlanError(f"{where}: give a percent or a selector (one of them)")
    merged = {**_DEFAULTS, **defaults, **wave}
    percent = _number(wave["percent"], f"{where}.percent", 0.0, 100.0) if "percent" in wave else None
    if percent == 0.0:
        raise PlanError(f"{where}.percent must be above 0")
    return Wave(name=_name(wave.get("name", f"wave-{index + 1}"), f"{where}.name"), percent=percent,
                selector=build_selector(wave["selector"], f"{where}.selector") if "selector" in wave else None,
                bake_s=_number(merged["bake_s"], f"{where}.bake_s"),
                min_devices=_count(merged["min_devices"], f"{where}.min_devices"),
                approval=bool(merged["approval"]),
                max_unavailable=_unavailable(merged["max_unavailable"], f"{where}.max_unavailable"))


_GATE_KEYS = {"name", "metric", "min", "max", "min_sample", "compare", "max_ratio"}


def _gate(raw: Any, index: int) -> Gate:
    where = f"gates[{index}]"
    gate = _mapping(raw, where)
    _keys(gate, where, _GATE_KEYS, frozenset({"metric"}))
    metric = gate["metric"]
    if metric not in METRICS:
        raise PlanError(f"{where}.metric {metric!r} (known: {', '.join(METRICS)})")
    direction, _ = METRICS[metric]
    name = _name(gate.get("name", metric), f"{where}.name")
    min_sample = _count(gate.get("min_sample", 1), f"{where}.min_sample", low=1)
    if gate.get("compare") is not None:
        if gate["compare"] != "control" or metric not in COMPARABLE or "max_ratio" not in gate:
            raise PlanError(f"{where}: compare: control takes a max_ratio, on a metric the devices not yet "
                            f"updated also have ({', '.join(COMPARABLE)})")
        if "min" in gate or "max" in gate:
            raise PlanError(f"{where}: a comparison with the control group takes max_ratio, not min or max")
        return Gate(name, metric, min_sample=min_sample, compare="control",
                    max_ratio=_number(gate["max_ratio"], f"{where}.max_ratio", 1.0))
    other = "max" if direction == "min" else "min"
    if direction not in gate or other in gate:
        raise PlanError(f"{where}: {metric} is bounded by {direction} (only)")
    low = -1.0 if metric == "golden_diff" else 0.0
    bound = _number(gate[direction], f"{where}.{direction}", low)
    return Gate(name, metric, min_sample=min_sample, **{direction: bound})


def _waves(raw: Any, defaults: Mapping[str, Any]) -> tuple[Wave, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlanError("waves must be a list of at least one wave")
    waves = tuple(_wave(w, i, defaults) for i, w in enumerate(raw))
    last = 0.0
    for i, wave in enumerate(waves):
        if wave.percent is not None:
            if wave.percent <= last:
                raise PlanError(f"waves[{i}].percent {wave.percent:g}: waves are cumulative, so each percent "
                                f"must be above the one before ({last:g})")
            last = wave.percent
    if waves[-1].percent != 100.0:
        raise PlanError("the last wave must be percent: 100, so that every selected device is reached")
    if len({w.name for w in waves}) != len(waves):
        raise PlanError("two waves share a name")
    return waves


_PLAN_KEYS = {"rollout", "model", "package", "selector", "spread", "defaults", "waves", "deadlines", "gates",
              "on_label_failure", "document_ttl_s"}


def build_plan(raw: Any) -> Plan:
    plan = _mapping(raw, "the plan")
    _keys(plan, "the plan", _PLAN_KEYS, frozenset({"rollout", "model", "package", "waves"}))
    package = _mapping(plan["package"], "package")
    _keys(package, "package", {"url", "sha256"}, frozenset({"url", "sha256"}))
    if not isinstance(package["url"], str) or not package["url"].startswith(("http://", "https://")):
        raise PlanError("package.url must be an http(s):// URL (what the devices' download speaks)")
    if not isinstance(package["sha256"], str) or not _SHA256.match(package["sha256"]):
        raise PlanError("package.sha256 must be 64 lower-case hex digits")
    defaults = _mapping(plan.get("defaults", {}), "defaults")
    _keys(defaults, "defaults", set(_DEFAULTS))
    deadlines = _mapping(plan.get("deadlines", {}), "deadlines")
    _keys(deadlines, "deadlines", {"ack_s", "install_s", "verify_slack_s", "revert_s"})
    spread = plan.get("spread", [])
    if not isinstance(spread, list) or not all(isinstance(s, str) for s in spread):
        raise PlanError("spread must be a list of label names")
    on_label_failure = plan.get("on_label_failure", "propose")
    if on_label_failure not in ON_LABEL_FAILURE:
        raise PlanError(f"on_label_failure must be one of {', '.join(ON_LABEL_FAILURE)}")
    gates = tuple(_gate(g, i) for i, g in enumerate(plan.get("gates") or DEFAULT_GATES))
    if len({g.name for g in gates}) != len(gates):
        raise PlanError("two gates share a name")
    return Plan(id=_name(plan["rollout"], "rollout"), model=_name(plan["model"], "model"),
                package=PackageRef(package["url"], package["sha256"]),
                selector=build_selector(plan.get("selector", {}), "selector"), waves=_waves(plan["waves"], defaults),
                gates=gates, spread=tuple(spread),
                deadlines=Deadlines(**{k: _number(v, f"deadlines.{k}") for k, v in deadlines.items()}),
                on_label_failure=on_label_failure,
                document_ttl_s=_number(plan.get("document_ttl_s", Plan.document_ttl_s), "document_ttl_s", 60.0))
