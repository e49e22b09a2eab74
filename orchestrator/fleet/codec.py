"""What the controller stores and reads: rollout state as JSON, device reports as ``DeviceView``. Pure.

Device reports are the agent's JSON (``agent.py``); a field missing or of the wrong type reads as
unknown, never as zero, so a malformed report cannot make a gate pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.fleet.gates import Assessment, Attribution, GateResult, Usage, Verdict
from orchestrator.fleet.plan import Plan
from orchestrator.fleet.rollout import Assignment, DeviceState, DeviceView, Phase, Rollout


def rollout_state(rollout: Rollout) -> dict[str, Any]:
    """Everything of a rollout but its plan and its assignments (stored beside it)."""
    found = rollout.attribution
    return {"phase": rollout.phase.value, "wave": rollout.wave, "created_at": rollout.created_at,
            "wave_started_at": rollout.wave_started_at, "reason": rollout.reason,
            "complete_since": rollout.complete_since,
            "assessment": [r.to_json() for r in rollout.assessment.results],
            "attribution": None if found is None else {
                "label": found.label, "value": found.value, "failed_in": found.failed_in,
                "devices_in": found.devices_in, "failed_out": found.failed_out, "devices_out": found.devices_out},
            "blocked": [list(b) for b in rollout.blocked]}


def build_rollout(plan: Plan, state: Mapping[str, Any], assignments: Mapping[str, Assignment]) -> Rollout:
    results = tuple(GateResult(r["name"], Verdict(r["verdict"]), r["value"], r["sample"], r["detail"])
                    for r in state.get("assessment", []))
    found = state.get("attribution")
    return Rollout(plan, Phase(state["phase"]), int(state["wave"]), dict(assignments), float(state["created_at"]),
                   float(state["wave_started_at"]), str(state.get("reason", "")), state.get("complete_since"),
                   Assessment(results), Attribution(**found) if found else None,
                   tuple((str(k), str(v)) for k, v in state.get("blocked", [])))


def assignment_row(rollout_id: str, a: Assignment) -> tuple[object, ...]:
    return (rollout_id, a.device, a.wave, a.state.value, a.since, a.prev_version, a.version, a.detail, int(a.overdue))


def assignment_from_row(row: tuple[Any, ...]) -> Assignment:
    _, device, wave, state, since, prev_version, version, detail, overdue = row
    return Assignment(device, int(wave), DeviceState(state), float(since), prev_version, version, detail or "",
                      bool(overdue))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def device_view(device: str, labels: Mapping[str, str], online: bool, report: Mapping[str, Any] | None,
                model: str) -> DeviceView:
    """The device as the rollout of ``model`` sees it; the enrolled ``labels`` win over reported ones."""
    entry = ((report or {}).get("models") or {}).get(model)
    if not isinstance(entry, dict):
        return DeviceView(device, dict(labels), online)
    usage: dict[int, Usage] = {}
    diffs: dict[int, float] = {}
    versions = entry.get("versions") if isinstance(entry.get("versions"), dict) else {}
    for key, counters in versions.items():
        if not str(key).isdigit() or not isinstance(counters, dict):
            continue
        numbers = [_int(counters.get(name)) for name in ("requests", "errors", "latency_ns", "rollbacks")]
        if all(n is not None for n in numbers):
            usage[int(key)] = Usage(*numbers)  # type: ignore[arg-type]
        diff = _float(counters.get("golden_diff"))
        if diff is not None:
            diffs[int(key)] = diff
    served = _int(entry.get("served"))
    sha = entry.get("served_sha256")
    return DeviceView(device, dict(labels), online, served, sha if isinstance(sha, str) else None, usage, diffs)
