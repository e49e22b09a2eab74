"""What the watcher does about the anomalies of one check: a pure decision, applied by ``daemons/watcher.py``.

An alert-severity anomaly is reported; a rollback-severity one rolls the judged version back
and quarantines it, unless the watcher already found that version has nowhere to go (no
verified fallback), in which case it is only reported again. One check rolls back once: when
several rules breach on the same bad answer, the first decides and the others go into its
evidence (a second rollback would judge the fallback on the bad version's evidence).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.core.policy import Severity
from orchestrator.core.rules import Anomaly


class Response(enum.Enum):
    ALERT = "alert"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class WatchAction:
    response: Response
    anomaly: Anomaly  # the anomaly that decided
    judged: int | None  # the served version the anomaly was seen on
    reason: str
    evidence: dict[str, Any]
    also: tuple[Anomaly, ...] = ()  # rollback anomalies of the same check that this rollback answers too

    @property
    def rules(self) -> tuple[str, ...]:
        return (self.anomaly.rule, *(a.rule for a in self.also))


def decide(anomaly: Anomaly, served: int | None, gave_up_on: int | None) -> WatchAction:
    evidence: dict[str, Any] = {"rule": anomaly.rule, "detail": anomaly.finding.detail,
                                "values": anomaly.finding.values, "served": served,
                                "detection_latency_ms": round(anomaly.detection_latency_s * 1000, 1)}
    reason = f"watch: {anomaly.rule}: {anomaly.finding.detail}"
    if anomaly.severity is Severity.ALERT or gave_up_on == served:
        return WatchAction(Response.ALERT, anomaly, served, reason, evidence)
    return WatchAction(Response.ROLLBACK, anomaly, served, reason, evidence)


def decide_check(anomalies: list[Anomaly], served: int | None, gave_up_on: int | None) -> list[WatchAction]:
    """Every alert, and at most one rollback (the first rollback anomaly's, the others folded in)."""
    actions: list[WatchAction] = []
    rollback: int | None = None
    for anomaly in anomalies:
        action = decide(anomaly, served, gave_up_on)
        if action.response is Response.ROLLBACK and rollback is not None:
            first = actions[rollback]
            also = (*first.also, anomaly)
            actions[rollback] = replace(first, also=also, evidence={
                **first.evidence, "also_breached": {a.rule: a.finding.detail for a in also}})
            continue
        if action.response is Response.ROLLBACK:
            rollback = len(actions)
        actions.append(action)
    return actions
