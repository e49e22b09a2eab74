"""Gates on what the told devices report: pass, fail or inconclusive. Pure.

Ratios come from summed counters (all errors over all requests of the new version), never from a
mean of per-device ratios, so a device with three requests does not weigh as much as one with
thirty thousand. A gate below its minimum sample is inconclusive, and so is one whose wave is
still going: only a failure can be told early (a failure ratio already over its bound stays
over it). Inconclusive never passes: a wave whose gates stay inconclusive past its deadline
pauses the rollout for a person to decide.

``attribute`` looks for the label that explains a failure: the label value that holds most failing devices
(refused, rolled back or erroring), whose devices fail far more often than the rest, and without which every
gate holds on enough data.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.fleet.plan import Gate


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


VERIFIED, FAILED, IN_PROGRESS = "verified", "failed", "in progress"


@dataclass(frozen=True)
class Usage:
    """One version's counters on one device (Triton's statistics, the journal's rollbacks)."""

    requests: int = 0
    errors: int = 0
    latency_ns: int = 0  # summed time of the successful requests inside Triton
    rollbacks: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.requests + other.requests, self.errors + other.errors, self.latency_ns + other.latency_ns,
                     self.rollbacks + other.rollbacks)


@dataclass(frozen=True)
class Member:
    """A device as the gates see it: told the new version (or, in a control group, not yet)."""

    device: str
    labels: Mapping[str, str]
    outcome: str  # VERIFIED, FAILED or IN_PROGRESS
    usage: Usage = Usage()
    golden_diff: float | None = None  # new version's golden score minus its predecessor's, on this device


@dataclass(frozen=True)
class GateResult:
    name: str
    verdict: Verdict
    value: float | None
    sample: int
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "verdict": self.verdict.value, "value": self.value, "sample": self.sample,
                "detail": self.detail}


@dataclass(frozen=True)
class Attribution:
    label: str
    value: str
    failed_in: int
    devices_in: int
    failed_out: int
    devices_out: int

    @property
    def selector(self) -> dict[str, str]:
        return {self.label: self.value}

    def describe(self) -> str:
        return (f"failures concentrate on {self.label}={self.value}: {self.failed_in} of {self.devices_in} "
                f"failing there (failed or erroring), {self.failed_out} of {self.devices_out} elsewhere; without "
                f"them every gate holds")


@dataclass(frozen=True)
class Assessment:
    results: tuple[GateResult, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if r.verdict is Verdict.FAIL)

    @property
    def passed(self) -> bool:
        return all(r.verdict is Verdict.PASS for r in self.results)


def _sum(members: Iterable[Member]) -> Usage:
    total = Usage()
    for member in members:
        total = total + member.usage
    return total


def _rate(metric: str, usage: Usage) -> tuple[float | None, int]:
    if metric == "error_rate":
        return (usage.errors / usage.requests if usage.requests else None), usage.requests
    successes = usage.requests - usage.errors
    return (usage.latency_ns / successes / 1e6 if successes > 0 else None), successes


def _measure(gate: Gate, members: Sequence[Member]) -> tuple[float | None, int, str]:
    """The gate's value over ``members``, its sample, and a few words on what was counted."""
    told = len(members)
    failed = sum(m.outcome == FAILED for m in members)
    verified = sum(m.outcome == VERIFIED for m in members)
    if gate.metric == "verified_ratio":
        return (verified / told if told else None), told, f"{verified} verified, {failed} failed of {told}"
    if gate.metric == "failure_ratio":
        return (failed / told if told else None), told, f"{failed} failed of {told}"
    if gate.metric == "rollbacks":
        rollbacks = _sum(members).rollbacks
        return float(rollbacks), told, f"{rollbacks} automatic rollbacks on {told} devices"
    if gate.metric == "golden_diff":
        diffs = [m.golden_diff for m in members if m.golden_diff is not None]
        value = sum(diffs) / len(diffs) if diffs else None
        return value, len(diffs), f"mean over {len(diffs)} devices"
    usage = _sum(members)
    value, sample = _rate(gate.metric, usage)
    return value, sample, f"{usage.errors} errors in {usage.requests} requests"


def _can_still_reach(gate: Gate, members: Sequence[Member]) -> bool:
    """verified_ratio: whether the devices still in progress could lift it to its minimum."""
    told = len(members)
    possible = sum(m.outcome != FAILED for m in members)
    return not told or gate.min is None or possible / told >= gate.min


def evaluate(gate: Gate, members: Sequence[Member], control: Sequence[Member], complete: bool,
             final: bool = False) -> GateResult:
    """``final``: the rollout's last wave, where the control group runs out as its devices are told."""
    value, sample, detail = _measure(gate, members)
    if gate.compare == "control":
        if final and not control:
            # It held against the control group in every earlier wave (the rollout could not advance otherwise).
            return GateResult(gate.name, Verdict.PASS if complete else Verdict.INCONCLUSIVE, None, 0,
                              f"{gate.metric}: every device updated, none left to compare with; it held in the "
                              f"waves before")
        return _against_control(gate, members, control, complete)
    if sample < gate.min_sample or value is None:
        if gate.metric == "verified_ratio" and not _can_still_reach(gate, members):
            return GateResult(gate.name, Verdict.FAIL, value, sample, f"{detail}: {gate.describe()} out of reach")
        return GateResult(gate.name, Verdict.INCONCLUSIVE, value, sample,
                          f"{detail}: sample {sample} below the minimum {gate.min_sample}")
    if gate.max is not None and value > gate.max:
        return GateResult(gate.name, Verdict.FAIL, value, sample, f"{detail}: {value:.4g} > {gate.max:g}")
    if gate.min is not None and value < gate.min:
        if gate.metric == "verified_ratio" and not _can_still_reach(gate, members):
            return GateResult(gate.name, Verdict.FAIL, value, sample, f"{detail}: {gate.describe()} out of reach")
        if gate.metric != "verified_ratio":
            return GateResult(gate.name, Verdict.FAIL, value, sample, f"{detail}: {value:.4g} < {gate.min:g}")
        if not complete:
            return GateResult(gate.name, Verdict.INCONCLUSIVE, value, sample, f"{detail}: wave still going")
        return GateResult(gate.name, Verdict.FAIL, value, sample, f"{detail}: {value:.4g} < {gate.min:g}")
    if not complete:
        return GateResult(gate.name, Verdict.INCONCLUSIVE, value, sample, f"{detail}: holds so far, wave still going")
    return GateResult(gate.name, Verdict.PASS, value, sample, detail)


def _against_control(gate: Gate, members: Sequence[Member], control: Sequence[Member], complete: bool) -> GateResult:
    ours, our_sample = _rate(gate.metric, _sum(members))
    theirs, their_sample = _rate(gate.metric, _sum(control))
    detail = f"{gate.metric} {_fmt(ours)} on {len(members)} updated, {_fmt(theirs)} on {len(control)} not yet updated"
    if ours is None or theirs is None or min(our_sample, their_sample) < gate.min_sample:
        return GateResult(gate.name, Verdict.INCONCLUSIVE, None, min(our_sample, their_sample),
                          f"{detail}: sample below the minimum {gate.min_sample} on one side")
    # A control group without a single error still bounds the ratio: one error's worth is its floor.
    floor = theirs if theirs > 0 else (1.0 / their_sample if gate.metric == "error_rate" else 1e-9)
    ratio = ours / floor
    assert gate.max_ratio is not None  # the plan requires it with compare
    if ratio > gate.max_ratio:
        return GateResult(gate.name, Verdict.FAIL, ratio, our_sample, f"{detail}: {ratio:.3g}x > {gate.max_ratio:g}x")
    verdict = Verdict.PASS if complete else Verdict.INCONCLUSIVE
    return GateResult(gate.name, verdict, ratio, our_sample, f"{detail}: {ratio:.3g}x")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def assess(gates: Sequence[Gate], members: Sequence[Member], control: Sequence[Member], complete: bool,
           final: bool = False) -> Assessment:
    return Assessment(tuple(evaluate(g, members, control, complete, final) for g in gates))


def _failing(member: Member) -> bool:
    return member.outcome == FAILED or member.usage.errors > 0 or member.usage.rollbacks > 0


def attribute(gates: Sequence[Gate], members: Sequence[Member], control: Sequence[Member],
              complete: bool) -> Attribution | None:
    """The label group (at most half the told devices) that concentrates the failures: most failing devices are
    in it, and without it every gate holds on a sample of at least its minimum.

    Groups are ranked by how much more often their devices fail than the rest do (the share failing inside minus
    the share outside), then the smaller first. The group itself need not fail the gates alone: a few devices
    of a rare hardware rarely reach a gate's minimum sample on their own, and a larger group that happens to
    hold them would otherwise be blamed.
    """
    if not any(_failing(m) for m in members):
        return None
    values: dict[tuple[str, str], int] = defaultdict(int)
    for member in members:
        for key, value in member.labels.items():
            values[(key, value)] += 1
    candidates = []
    for (key, value), size in values.items():
        if size * 2 > len(members):
            continue  # a label most told devices share is no concentration: blocking it stops the rollout
        inside = [m for m in members if m.labels.get(key) == value]
        outside = [m for m in members if m.labels.get(key) != value]
        failing_in, failing_out = sum(map(_failing, inside)), sum(map(_failing, outside))
        if failing_in <= failing_out:
            continue  # not where most failing devices are
        # Positive: more failing inside than out, on no more devices (a group is at most half the told ones).
        lift = failing_in / len(inside) - failing_out / len(outside)
        rest = [c for c in control if c.labels.get(key) != value]
        held = assess(gates, outside, rest, complete)
        if held.failed or any(r.verdict is Verdict.INCONCLUSIVE and r.sample < g.min_sample
                              for r, g in zip(held.results, gates, strict=True)):
            continue  # the rest fails, or is too thin to show it holds: taking a group out must not starve a gate
        candidates.append((-lift, size, key, value, failing_in, failing_out, len(outside)))
    if not candidates:
        return None
    _, size, key, value, failing_in, failing_out, devices_out = min(candidates)
    return Attribution(key, value, failing_in, size, failing_out, devices_out)
