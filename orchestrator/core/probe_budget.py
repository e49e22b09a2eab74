"""The watcher's probe budget: a share of the device's inference time, kept as a token bucket.

Probes may spend at most ``share`` seconds of device compute per second of wall time. The bucket
is credited ``share * elapsed`` and debited the cost of each probe (``daemons/probe_schedule.py``
measures it from Triton's statistics); a probe runs once the credit covers its cost and
``interval_s`` has passed since the last one. The bucket holds at most ``BURST_PROBES`` probes'
worth, so a long idle spell does not allow a burst. The share is ``bake_budget`` for ``bake_s``
after a switch, when a new version is most likely to fail, and ``probe_budget`` after it, split
among the models watched on the device (``Budget.of``):

    share ^
     bake |‾‾‾‾‾‾‾‾‾‾‾|
   steady |           |________________
          +-----------+-----------------> time
        switch     + bake_s

A share of 0 means no probes in that phase. Values and plain functions of clock times passed in:
no I/O, no clock of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from orchestrator.core.journal import JournalSummary
from orchestrator.core.policy import WatchPolicy

BAKE, STEADY = "bake", "steady"
PHASES = (BAKE, STEADY)
BURST_PROBES = 2.0  # the bucket's cap, in probes' cost: one spare probe after an idle spell, not a burst
SLACK_S = 1e-6  # clock times summed in steps (0.05 + 0.05 + ...) are not exact


@dataclass(frozen=True)
class Budget:
    steady: float  # share of the device's time after the bake (policy probe_budget)
    bake: float  # ...and during it (bake_budget)
    bake_s: float
    interval_s: float  # the shortest time between probes, whatever the credit

    @classmethod
    def of(cls, policy: WatchPolicy, sharers: int = 1) -> Budget:
        """``sharers``: the models one daemon watches on the device. The steady share is the device's, split
        evenly among them (ten models at 1% probe 0.1% each, not 10% together); the bake's is the switched
        model's own, since a switch bakes one model at a time."""
        return cls(policy.probe_budget / max(1, sharers), policy.bake_budget, policy.bake_s, policy.interval_s)

    def phase(self, since_switch_s: float) -> str:
        return BAKE if since_switch_s < self.bake_s else STEADY

    def share(self, since_switch_s: float) -> float:
        return self.bake if self.phase(since_switch_s) == BAKE else self.steady


@dataclass(frozen=True)
class Bucket:
    switched_at: float  # clock time of the switch the bake follows (may be before the watcher started)
    at: float  # clock time of the last credit
    tokens: float  # device seconds the probes may still spend
    last_probe: float = -math.inf


def start(switched_at: float, now: float) -> Bucket:
    """The bucket after a switch: full, so that the new version is probed at once."""
    return Bucket(switched_at, now, math.inf)


def earned(budget: Budget, bucket: Bucket, start_s: float, end_s: float) -> float:
    """Device seconds credited between two clock times: the bake's share, then the steady one."""
    if end_s <= start_s:
        return 0.0
    bake_end = bucket.switched_at + budget.bake_s
    in_bake = max(0.0, min(end_s, bake_end) - start_s)
    return budget.bake * in_bake + budget.steady * (end_s - start_s - in_bake)


def credited(budget: Budget, bucket: Bucket, cost: float, now: float) -> Bucket:
    """The bucket at ``now``: credit since the last look, capped at ``BURST_PROBES`` probes of ``cost``."""
    tokens = min(bucket.tokens + earned(budget, bucket, bucket.at, now), BURST_PROBES * cost)
    return replace(bucket, at=max(now, bucket.at), tokens=tokens)


def ready_at(budget: Budget, bucket: Bucket, cost: float, now: float) -> float:
    """When the next probe of ``cost`` may run (``now`` if it may now); ``inf`` when no share will pay for it."""
    at = max(now, bucket.last_probe + budget.interval_s)
    tokens = credited(budget, bucket, cost, at).tokens
    bake_end = bucket.switched_at + budget.bake_s
    phases = [(at, bake_end, budget.bake), (max(at, bake_end), math.inf, budget.steady)] if at < bake_end \
        else [(at, math.inf, budget.steady)]
    for begins, ends, share in phases:
        if share <= 0:
            continue  # no probes in this phase, whatever the credit
        if tokens >= cost - SLACK_S * share:
            return begins
        if begins + (cost - tokens) / share < ends:  # at ``ends`` the next phase is in force
            return begins + (cost - tokens) / share
        tokens += share * (ends - begins)
    return math.inf


def due(budget: Budget, bucket: Bucket, cost: float, now: float) -> bool:
    return ready_at(budget, bucket, cost, now) <= now + SLACK_S


def spend(budget: Budget, bucket: Bucket, cost: float, now: float, slot: float | None = None) -> Bucket:
    """A probe ran at ``now`` and cost ``cost`` device seconds; ``interval_s`` to the next one counts from ``slot``
    (default ``now``: the time it was due, when a daemon ticks its watchers on a grid, ``on_grid``)."""
    bucket = credited(budget, bucket, cost, now)
    return replace(bucket, tokens=bucket.tokens - cost, last_probe=now if slot is None else slot)


def on_grid(t: float, step: float) -> float:
    """The last multiple of ``step`` at or before ``t`` (a clock time a little past one counts as on it)."""
    return math.floor(t / step + SLACK_S) * step


def grid_after(t: float, step: float) -> float:
    """The first multiple of ``step`` at or after ``t``."""
    return t if math.isinf(t) else math.ceil(t / step - SLACK_S) * step


# --- what `orchestrate status` shows, without the watcher -------------------------------------

@dataclass(frozen=True)
class Standing:
    phase: str
    share: float  # the share in force
    steady: float  # the share after the bake
    bake_left_s: float  # 0 at steady state


def standing(budget: Budget, since_switch_s: float | None) -> Standing:
    """The budget in force ``since_switch_s`` after the last switch (None: none on record, steady)."""
    if since_switch_s is None or budget.phase(since_switch_s) == STEADY:
        return Standing(STEADY, budget.steady, budget.steady, 0.0)
    return Standing(BAKE, budget.bake, budget.steady, budget.bake_s - since_switch_s)


def last_switch(summary: JournalSummary) -> str | None:
    """The time (ISO) of the journal's last promote or rollback, None when it records none."""
    times = [t for t in (summary.last_time("promote"), summary.last_time("rollback")) if t]
    parsed = [(when, t) for t in times if (when := _unix(t)) is not None]
    return max(parsed)[1] if parsed else None


def since(iso: str | None, now_unix: float) -> float | None:
    """Seconds from an ISO time to ``now_unix`` (never negative: a clock set back is "just now")."""
    when = _unix(iso) if iso else None
    return None if when is None else max(0.0, now_unix - when)


def _unix(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None
