"""What the watcher does about an anomaly: a pure decision, applied by ``daemons/watcher.py``.

An alert-severity anomaly is reported; a rollback-severity one rolls the judged version back
and quarantines it, unless the watcher already found that version has nowhere to go (no
verified fallback), in which case it is only reported again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from orchestrator.core.policy import Severity
from orchestrator.core.rules import Anomaly


class Response(enum.Enum):
    ALERT = "alert"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class WatchAction:
    response: Response
    rule: str
    judged: int | None  # the served version the anomaly was seen on
    reason: str
    evidence: dict[str, Any]


def decide(anomaly: Anomaly, served: int | None, gave_up_on: int | None) -> WatchAction:
    evidence: dict[str, Any] = {"rule": anomaly.rule, "detail": anomaly.finding.detail,
                                "values": anomaly.finding.values, "served": served,
                                "detection_latency_ms": round(anomaly.detection_latency_s * 1000, 1)}
    reason = f"watch: {anomaly.rule}: {anomaly.finding.detail}"
    if anomaly.severity is Severity.ALERT or gave_up_on == served:
        return WatchAction(Response.ALERT, anomaly.rule, served, reason, evidence)
    return WatchAction(Response.ROLLBACK, anomaly.rule, served, reason, evidence)
