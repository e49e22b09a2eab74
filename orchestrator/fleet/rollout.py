"""A rollout's state and the one step the controller takes each gate interval. Pure.

The controller reads a ``Rollout`` from its store, feeds it the devices' events (``on_event``),
takes one ``step`` (deadlines, gates, the next devices to tell) and writes the result back before
it publishes anything: killed at any point, it resumes from what it wrote, and what it had not
yet published it publishes again (desired documents are retained and numbered, so twice is once).

Every device state has a deadline. A device told and then silent fails; it never passes. When a
gate fails the rollout halts and every device that was told the version is told to revert
(offline ones get that document when they reconnect: it is retained). When the failures
concentrate on one label value, only those devices revert and the rollout waits for a person to
block that label (or blocks it itself, ``on_label_failure: block``) instead of stopping the rest.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from orchestrator.fleet.documents import INSTALL, REVERT
from orchestrator.fleet.gates import (
    FAILED,
    IN_PROGRESS,
    VERIFIED,
    Assessment,
    Attribution,
    Member,
    Usage,
    Verdict,
    assess,
    attribute,
)
from orchestrator.fleet.plan import Plan
from orchestrator.fleet.waves import assign_waves


class Phase(str, enum.Enum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting approval"  # the next wave asks for `fleet rollout resume`
    PAUSED = "paused"  # by an operator, or gates inconclusive past the wave's deadline
    BLOCK_PROPOSED = "block proposed"  # failures on one label: `fleet block` or `fleet rollout abort`
    SUCCEEDED = "succeeded"
    HALTED = "halted"  # a gate failed: every told device reverts
    ABORTED = "aborted"  # by an operator: every told device reverts

    @property
    def final(self) -> bool:
        """No wave starts again; reverts still finish."""
        return self in (Phase.SUCCEEDED, Phase.HALTED, Phase.ABORTED)


class DeviceState(str, enum.Enum):
    PENDING = "pending"  # its wave has not reached it
    TOLD = "told"  # desired document published, no answer yet
    APPLYING = "applying"  # fetching, importing, verifying under the device's own gates
    BAKING = "baking"  # serving the new version, watched locally
    VERIFIED = "verified"  # baked clean: counts towards the wave's success
    FAILED = "failed"  # refused, rolled back, or silent past a deadline
    REVERTING = "reverting"  # told to serve its previous version again
    REVERTED = "reverted"
    SKIPPED = "skipped"  # excluded by a block, never told

    @property
    def done(self) -> bool:
        """Settled as far as its wave is concerned."""
        return self in (DeviceState.VERIFIED, DeviceState.FAILED, DeviceState.SKIPPED, DeviceState.REVERTED)


TOLD_STATES = (DeviceState.TOLD, DeviceState.APPLYING, DeviceState.BAKING, DeviceState.VERIFIED, DeviceState.FAILED)
IN_FLIGHT = (DeviceState.TOLD, DeviceState.APPLYING)


@dataclass(frozen=True)
class Assignment:
    device: str
    wave: int
    state: DeviceState = DeviceState.PENDING
    since: float = 0.0  # when it entered its state
    prev_version: int | None = None  # what it served when told: what a revert serves again
    version: int | None = None  # the device's own number for the new package, once it serves it
    detail: str = ""
    overdue: bool = False  # told to revert and silent past the deadline (still retained for it)


@dataclass(frozen=True)
class DeviceView:
    """A device as its latest report shows it (the controller's store)."""

    id: str
    labels: Mapping[str, str]
    online: bool = True
    served: int | None = None
    served_sha256: str | None = None
    usage: Mapping[int, Usage] = field(default_factory=dict)  # per version of the device's
    golden_diff: Mapping[int, float] = field(default_factory=dict)  # per version: its score minus its predecessor's


@dataclass(frozen=True)
class Event:
    """A device's answer about this rollout (the controller has checked it answers the latest document)."""

    device: str
    kind: str  # applying, serving, verified, failed, reverted
    at: float
    version: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Tell:
    device: str
    intent: str  # INSTALL or REVERT
    revert_to: int | None = None


@dataclass(frozen=True)
class Rollout:
    plan: Plan
    phase: Phase
    wave: int
    assignments: Mapping[str, Assignment]
    created_at: float
    wave_started_at: float
    reason: str = ""
    complete_since: float | None = None  # the current wave settled with gates still inconclusive
    assessment: Assessment = field(default_factory=Assessment)
    attribution: Attribution | None = None
    blocked: tuple[tuple[str, str], ...] = ()  # label selectors excluded by a block

    @property
    def id(self) -> str:
        return self.plan.id


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    tells: tuple[Tell, ...] = ()
    lines: tuple[str, ...] = ()
    block: Attribution | None = None  # a block for the controller to sign and publish


def start(plan: Plan, devices: Mapping[str, DeviceView], now: float) -> Rollout:
    waves = assign_waves(plan, {d.id: d.labels for d in devices.values()})
    assignments = {d: Assignment(d, w, since=now) for d, w in waves.items()}
    return Rollout(plan, Phase.RUNNING, 0, assignments, now, now)


def _set(rollout: Rollout, device: str, **changes: object) -> Rollout:
    assignments = dict(rollout.assignments)
    assignments[device] = replace(assignments[device], **changes)  # type: ignore[arg-type]
    return replace(rollout, assignments=assignments)


_EVENT_MOVES: dict[str, tuple[tuple[DeviceState, ...], DeviceState]] = {
    "applying": ((DeviceState.TOLD,), DeviceState.APPLYING),
    "serving": ((DeviceState.TOLD, DeviceState.APPLYING), DeviceState.BAKING),
    "verified": ((DeviceState.BAKING,), DeviceState.VERIFIED),
    "failed": ((DeviceState.TOLD, DeviceState.APPLYING, DeviceState.BAKING, DeviceState.VERIFIED), DeviceState.FAILED),
    "reverted": ((DeviceState.REVERTING,), DeviceState.REVERTED),
}


def on_event(rollout: Rollout, event: Event) -> tuple[Rollout, str | None]:
    """The rollout after one device's answer, and a line for its record when the state moved."""
    current = rollout.assignments.get(event.device)
    move = _EVENT_MOVES.get(event.kind)
    if current is None or move is None or current.state not in move[0]:
        return rollout, None
    changes: dict[str, object] = {"state": move[1], "since": event.at, "detail": event.detail, "overdue": False}
    if move[1] is DeviceState.BAKING:
        changes["version"] = event.version
    rollout = _set(rollout, event.device, **changes)
    if move[1] in (DeviceState.FAILED, DeviceState.REVERTED):
        return rollout, f"{event.device}: {move[1].value}" + (f" ({event.detail})" if event.detail else "")
    return rollout, None


def _deadline(plan: Plan, a: Assignment) -> float | None:
    d = plan.deadlines
    bake = plan.waves[a.wave].bake_s
    return {DeviceState.TOLD: d.ack_s, DeviceState.APPLYING: d.install_s,
            DeviceState.BAKING: bake + d.verify_slack_s, DeviceState.REVERTING: d.revert_s}.get(a.state)


def _deadlines(rollout: Rollout, now: float) -> tuple[Rollout, list[str]]:
    lines = []
    for a in list(rollout.assignments.values()):
        limit = _deadline(rollout.plan, a)
        if limit is None or now - a.since <= limit or a.overdue:
            continue
        if a.state is DeviceState.REVERTING:
            rollout = _set(rollout, a.device, overdue=True)
            lines.append(f"{a.device}: silent {limit:.0f} s after being told to revert (its document waits for it)")
            continue
        why = {DeviceState.TOLD: f"silent {limit:.0f} s after being told",
               DeviceState.APPLYING: f"still installing after {limit:.0f} s",
               DeviceState.BAKING: f"not verified {limit:.0f} s after it started serving"}[a.state]
        rollout = _set(rollout, a.device, state=DeviceState.FAILED, since=now, detail=why)
        lines.append(f"{a.device}: failed ({why})")
    return rollout, lines


def _outcome(state: DeviceState) -> str:
    return {DeviceState.VERIFIED: VERIFIED, DeviceState.FAILED: FAILED}.get(state, IN_PROGRESS)


def members(rollout: Rollout, devices: Mapping[str, DeviceView]) -> list[Member]:
    """The devices told the version and still in the population the gates judge."""
    found = []
    for a in rollout.assignments.values():
        if a.state not in TOLD_STATES:
            continue
        view = devices.get(a.device)
        labels = view.labels if view else {}
        usage = view.usage.get(a.version, Usage()) if view and a.version is not None else Usage()
        diff = view.golden_diff.get(a.version) if view and a.version is not None else None
        found.append(Member(a.device, labels, _outcome(a.state), usage, diff))
    return found


def control(rollout: Rollout, devices: Mapping[str, DeviceView], told: Sequence[Member]) -> list[Member]:
    """Not-yet-told devices in the same label groups (the plan's spread labels) as the told ones."""
    spread = rollout.plan.spread
    groups = {tuple(m.labels.get(k, "") for k in spread) for m in told}
    found = []
    for a in rollout.assignments.values():
        view = devices.get(a.device)
        if a.state is not DeviceState.PENDING or view is None or view.served is None:
            continue
        if tuple(view.labels.get(k, "") for k in spread) in groups:
            found.append(Member(a.device, view.labels, IN_PROGRESS, view.usage.get(view.served, Usage())))
    return found


def _wave_members(rollout: Rollout, wave: int) -> list[Assignment]:
    return [a for a in rollout.assignments.values() if a.wave == wave]


def _limit(rollout: Rollout, wave: int) -> int:
    share = rollout.plan.waves[wave].max_unavailable
    size = sum(a.state is not DeviceState.SKIPPED for a in _wave_members(rollout, wave))
    return max(1, math.ceil(share * size)) if share < 1 else int(share)


def _tell_next(rollout: Rollout, devices: Mapping[str, DeviceView], now: float) -> tuple[Rollout, list[Tell]]:
    wave = _wave_members(rollout, rollout.wave)
    room = _limit(rollout, rollout.wave) - sum(a.state in IN_FLIGHT for a in wave)
    pending = [a for a in wave if a.state is DeviceState.PENDING]
    # Online devices first: an offline one holds its slot until its deadline.
    pending.sort(key=lambda a: (not (devices.get(a.device) and devices[a.device].online), a.device))
    tells = []
    unreported = [a for a in pending if (v := devices.get(a.device)) is None or v.served is None]
    # Not told before its first report (a revert needs what it served): it waits, and fails once the wave has
    # been running for the ack deadline, as a silent device does. It holds no slot while it waits.
    if now - rollout.wave_started_at >= rollout.plan.deadlines.ack_s:
        for a in unreported:
            rollout = _set(rollout, a.device, state=DeviceState.FAILED, since=now,
                           detail=f"never reported what it serves within {rollout.plan.deadlines.ack_s:g} s of "
                                  f"its wave's start: nothing to revert to")
    for a in [a for a in pending if a not in unreported][:max(room, 0)]:
        view = devices[a.device]
        rollout = _set(rollout, a.device, state=DeviceState.TOLD, since=now, prev_version=view.served)
        tells.append(Tell(a.device, INSTALL))
    return rollout, tells


def _revert(rollout: Rollout, names: Sequence[str], now: float, why: str) -> tuple[Rollout, list[Tell]]:
    tells = []
    for name in names:
        a = rollout.assignments[name]
        if a.state not in TOLD_STATES:
            continue
        if a.prev_version is None:
            rollout = _set(rollout, name, state=DeviceState.REVERTED, since=now, detail="had no version before")
            continue
        rollout = _set(rollout, name, state=DeviceState.REVERTING, since=now, detail=why, overdue=False)
        tells.append(Tell(name, REVERT, a.prev_version))
    return rollout, tells


def _in_group(view: DeviceView | None, selectors: Sequence[tuple[str, str]]) -> bool:
    return view is not None and any(view.labels.get(k) == v for k, v in selectors)


def block(rollout: Rollout, devices: Mapping[str, DeviceView], selector: tuple[str, str], now: float) -> Step:
    """Exclude a label from the rest of the rollout: its told devices revert, its pending ones are skipped."""
    rollout = replace(rollout, blocked=(*rollout.blocked, selector), attribution=None,
                      phase=Phase.RUNNING if not rollout.phase.final else rollout.phase,
                      reason="" if not rollout.phase.final else rollout.reason)
    group = [d for d in rollout.assignments if _in_group(devices.get(d), [selector])]
    rollout, tells = _revert(rollout, group, now, f"{selector[0]}={selector[1]} blocked")
    for name in group:
        if rollout.assignments[name].state is DeviceState.PENDING:
            rollout = _set(rollout, name, state=DeviceState.SKIPPED, since=now, detail=f"{selector[0]}={selector[1]} "
                                                                                        f"blocked")
    return Step(rollout, tuple(tells), (f"blocked {selector[0]}={selector[1]}: {len(tells)} devices revert, "
                                        f"the rest goes on",))


def halt(rollout: Rollout, now: float, phase: Phase, why: str) -> Step:
    rollout = replace(rollout, phase=phase, reason=why)
    rollout, tells = _revert(rollout, list(rollout.assignments), now, why)
    return Step(rollout, tuple(tells), (f"{phase.value}: {why}; {len(tells)} devices told to revert",))


def _on_failure(rollout: Rollout, devices: Mapping[str, DeviceView], told: list[Member], rest: list[Member],
                now: float, complete: bool) -> Step:
    failed = "; ".join(f"{r.name}: {r.detail}" for r in rollout.assessment.failed)
    found = attribute(rollout.plan.gates, told, rest, complete)
    if found is None or (found.label, found.value) in rollout.blocked:
        return halt(rollout, now, Phase.HALTED, f"gate failed ({failed})")
    if rollout.plan.on_label_failure == "block":
        step = block(rollout, devices, (found.label, found.value), now)
        return replace(step, block=found, lines=(f"gate failed ({failed}); {found.describe()}", *step.lines))
    rollout = replace(rollout, phase=Phase.BLOCK_PROPOSED, attribution=found, reason=f"gate failed ({failed})")
    group = [m.device for m in told if m.labels.get(found.label) == found.value]
    rollout, tells = _revert(rollout, group, now, f"{found.label}={found.value} failing")
    return Step(rollout, tuple(tells), (f"gate failed ({failed}); {found.describe()}: {len(tells)} of them told to "
                                        f"revert; `orchestrate fleet block {rollout.id}` blocks {found.label}="
                                        f"{found.value} and goes on, `orchestrate fleet rollout abort {rollout.id}` "
                                        f"reverts every device",))


def _wave_complete(rollout: Rollout) -> bool:
    wave = _wave_members(rollout, rollout.wave)
    if not wave:  # its share was reached by the waves before (a canary larger than the next percent)
        return True
    counted = [a for a in wave if a.state is not DeviceState.SKIPPED]
    return all(a.state.done for a in wave) and len(counted) >= rollout.plan.waves[rollout.wave].min_devices


def _advance(rollout: Rollout, now: float) -> tuple[Rollout, list[str]]:
    plan = rollout.plan
    if rollout.wave + 1 >= len(plan.waves):
        return replace(rollout, phase=Phase.SUCCEEDED, reason="every wave verified", complete_since=None), [
            f"succeeded: {sum(a.state is DeviceState.VERIFIED for a in rollout.assignments.values())} devices verified"]
    nxt = plan.waves[rollout.wave + 1]
    if nxt.approval and rollout.phase is not Phase.AWAITING_APPROVAL:
        return replace(rollout, phase=Phase.AWAITING_APPROVAL, complete_since=None,
                       reason=f"wave {nxt.name} waits for approval"), [
            f"wave {plan.waves[rollout.wave].name} passed its gates; wave {nxt.name} waits for "
            f"`orchestrate fleet rollout resume {rollout.id}`"]
    rollout = replace(rollout, wave=rollout.wave + 1, wave_started_at=now, phase=Phase.RUNNING, reason="",
                      complete_since=None)
    size = len(_wave_members(rollout, rollout.wave))
    return rollout, [f"wave {nxt.name} started: {size} devices"]


def step(rollout: Rollout, devices: Mapping[str, DeviceView], now: float) -> Step:
    rollout, lines = _deadlines(rollout, now)
    if rollout.phase.final:
        return Step(rollout, (), tuple(lines))
    told = members(rollout, devices)
    rest = control(rollout, devices, told)
    complete = _wave_complete(rollout)
    final = rollout.wave == len(rollout.plan.waves) - 1
    rollout = replace(rollout, assessment=assess(rollout.plan.gates, told, rest, complete, final))
    if rollout.assessment.failed and rollout.phase is not Phase.BLOCK_PROPOSED:
        failure = _on_failure(rollout, devices, told, rest, now, complete)
        return replace(failure, lines=(*lines, *failure.lines))
    if rollout.assessment.failed:  # while a block is proposed, a failure outside that label halts everything
        outside = [m for m in told if rollout.attribution is None
                   or m.labels.get(rollout.attribution.label) != rollout.attribution.value]
        if assess(rollout.plan.gates, outside, rest, complete, final).failed:
            failure = halt(rollout, now, Phase.HALTED, "gates fail beyond the proposed block")
            return replace(failure, lines=(*lines, *failure.lines))
    if rollout.phase is not Phase.RUNNING:
        return Step(rollout, (), tuple(lines))
    if complete and rollout.assessment.passed:
        rollout, more = _advance(rollout, now)
        lines += more
    elif complete:
        since = rollout.complete_since if rollout.complete_since is not None else now
        rollout = replace(rollout, complete_since=since)
        if now - since > max(rollout.plan.waves[rollout.wave].bake_s, 1.0):
            waiting = "; ".join(f"{r.name}: {r.detail}" for r in rollout.assessment.results
                                if r.verdict is not Verdict.PASS)
            rollout = replace(rollout, phase=Phase.PAUSED, reason=f"gates inconclusive ({waiting})")
            lines.append(f"paused: gates inconclusive past the wave's deadline ({waiting}); inconclusive never passes")
    if rollout.phase is not Phase.RUNNING:
        return Step(rollout, (), tuple(lines))
    rollout, tells = _tell_next(rollout, devices, now)
    return Step(rollout, tuple(tells), tuple(lines))


def pause(rollout: Rollout, why: str) -> Rollout:
    return rollout if rollout.phase.final else replace(rollout, phase=Phase.PAUSED, reason=why)


def resume(rollout: Rollout, now: float) -> tuple[Rollout, list[str]]:
    """Approval of the next wave, or the end of a pause (a wave held for inconclusive gates gets more time)."""
    if rollout.phase is Phase.AWAITING_APPROVAL:
        return _advance(rollout, now)
    if rollout.phase is Phase.PAUSED:
        return replace(rollout, phase=Phase.RUNNING, reason="", complete_since=None), ["resumed"]
    return rollout, []
