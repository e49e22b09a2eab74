"""What `orchestrate fleet rollout status` and the controller's metrics show of a rollout, from the store."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.fleet.plan import build_plan
from orchestrator.fleet.rollout import DeviceState, Rollout
from orchestrator.fleet.store import FleetStore


@dataclass(frozen=True)
class RolloutStatus:
    rollout: Rollout
    states: dict[str, int]  # device state -> devices
    waves: list[dict[str, Any]]
    on_version: int  # devices whose latest report serves the rollout's package
    left_on_version: int  # of those, devices told to revert (or skipped by a block): should reach 0
    history: list[tuple[float, str]]
    signer: str

    def to_json(self) -> dict[str, Any]:
        r = self.rollout
        return {"rollout": r.id, "model": r.plan.model, "package": r.plan.package.to_json(), "phase": r.phase.value,
                "reason": r.reason, "wave": {"index": r.wave, "name": r.plan.waves[r.wave].name,
                                             "of": len(r.plan.waves)},
                "devices": self.states, "waves": self.waves, "serving_new_version": self.on_version,
                "left_on_version": self.left_on_version,
                "gates": [g.to_json() for g in r.assessment.results],
                "proposal": None if r.attribution is None else {"block": r.attribution.selector,
                                                                "why": r.attribution.describe()},
                "blocked": [dict([b]) for b in r.blocked], "signed_by": self.signer,
                "history": [{"at": at, "line": line} for at, line in self.history]}


def rollout_status(store: FleetStore, rollout_id: str, history: int = 12) -> RolloutStatus:
    with store.transaction() as db:
        rollout = store.load_rollout(db, rollout_id, build_plan)
    views = store.views(rollout.plan.model)
    states = Counter(a.state.value for a in rollout.assignments.values())
    waves = []
    for index, wave in enumerate(rollout.plan.waves):
        members = [a for a in rollout.assignments.values() if a.wave == index]
        waves.append({"name": wave.name, "devices": len(members),
                      "states": dict(Counter(a.state.value for a in members))})
    sha = rollout.plan.package.sha256
    serving = {d for d, v in views.items() if v.served_sha256 == sha and d in rollout.assignments}
    leaving = (DeviceState.REVERTING, DeviceState.REVERTED, DeviceState.SKIPPED)
    left = sum(rollout.assignments[d].state in leaving for d in serving)
    _, signer = store.plan_file(rollout_id)
    return RolloutStatus(rollout, dict(states), waves, len(serving), left, store.history(rollout_id, history), signer)


def status_lines(status: RolloutStatus) -> list[str]:
    r = status.rollout
    wave = r.plan.waves[r.wave]
    lines = [f"rollout {r.id}: {r.plan.model} {r.plan.package.sha256[:12]} — {r.phase.value}"
             + (f" ({r.reason})" if r.reason else ""),
             f"  wave {r.wave + 1}/{len(r.plan.waves)} {wave.name}; devices: "
             + ", ".join(f"{n} {s}" for s, n in sorted(status.states.items())),
             f"  serving the new version: {status.on_version}"
             + (f"; told to leave it but still on it: {status.left_on_version}" if status.left_on_version else "")]
    for result in r.assessment.results:
        lines.append(f"  gate {result.name}: {result.verdict.value} — {result.detail}")
    if r.attribution is not None:
        lines.append(f"  proposal: block {r.attribution.label}={r.attribution.value} ({r.attribution.describe()}): "
                     f"orchestrate fleet block {r.id}")
    for label, value in r.blocked:
        lines.append(f"  blocked: {label}={value}")
    lines += [f"  {line}" for _, line in status.history[-6:]]
    return lines
