"""The orchestrator's own Prometheus series, on a registry passed in (one per test, one per daemon)."""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orchestrator.core.journal import JournalSummary, Record, counted
from orchestrator.core.policy import Severity
from orchestrator.core.probe_budget import PHASES

_SWITCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DETECTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


EVENTS = ("rollback", "promote", "promote_failed", "quarantine")
BLOCKED_REASONS = ("no_fallback", "loop_breaker", "paused")


def _unix(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()  # a record with an unreadable time is still an event that happened


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._initialised: set[str] = set()
        self._labels: dict[str, set[str]] = {}  # label names exported per model
        self.served_version = Gauge("orchestrator_served_version", "Version the disk says is served",
                                    ["model"], registry=registry)
        self.resident = Gauge("orchestrator_resident_version", "1 for each version kept loaded (served or fallback)",
                              ["model", "version"], registry=registry)
        self.rollbacks = Counter("orchestrator_rollbacks", "Rollbacks: the watcher's (trigger watch, by the rule "
                                 "that caused them) and the operator's (trigger operator); counted from the journal",
                                 ["model", "rule", "trigger"], registry=registry)
        self.quarantines = Counter("orchestrator_quarantines", "Versions the watcher quarantined as it rolled them "
                                   "back; counted from the journal", ["model"], registry=registry)
        self.last_event = Gauge("orchestrator_last_event_timestamp_seconds", "Unix time of the last rollback, "
                                "promote, failed or refused promote, and quarantine (0: none yet)", ["model", "event"],
                                registry=registry)
        self.rollback_blocked = Gauge("orchestrator_rollback_blocked", "1 while the served version breaches a "
                                      "rollback rule and the watcher cannot act (no verified fallback, loop "
                                      "breaker, paused)",
                                      ["model", "reason"], registry=registry)
        self.anomalies = Counter("orchestrator_anomalies", "Anomalies raised by the watcher",
                                 ["model", "rule", "severity"], registry=registry)
        self.switch_duration = Histogram("orchestrator_switch_duration_seconds",
                                         "Command start until the target version served",
                                         ["model", "action"], buckets=_SWITCH_BUCKETS, registry=registry)
        self.detection_latency = Histogram("orchestrator_detection_latency_seconds",
                                           "First breaching observation until the decision",
                                           ["model", "rule"], buckets=_DETECTION_BUCKETS, registry=registry)
        self.promotions = Counter("orchestrator_promotions", "Promote outcomes seen in the journal",
                                  ["model", "outcome"], registry=registry)
        self.last_check = Gauge("orchestrator_last_check_timestamp_seconds", "Unix time of the last completed check",
                                ["model"], registry=registry)
        self.checks = Counter("orchestrator_checks", "Checks completed", ["model"], registry=registry)
        self.errors = Counter("orchestrator_watch_errors", "Failures the watcher survived, by where and kind "
                              "(orchestrator, disk, bug)", ["model", "where", "kind"], registry=registry)
        self.pending_writes = Gauge("orchestrator_pending_writes", "Journal records and marks the disk refused "
                                    "(full, read-only), held by the watcher until it can write them",
                                    registry=registry)
        self.paused = Gauge("orchestrator_automatic_rollback_paused", "1 while an operator has paused the "
                            "watcher's automatic rollback of the model (`orchestrate pause`)", ["model"],
                            registry=registry)
        self.version_label = Gauge("orchestrator_version_label", "The version each label points at (`orchestrate "
                                   "label`; stable follows the served version)", ["model", "label"],
                                   registry=registry)
        self.triton_up = Gauge("orchestrator_triton_up", "1 when Triton answered the last check", registry=registry)
        self.probe_latency = Histogram("orchestrator_probe_latency_seconds", "Latency of the watcher's probes",
                                       ["model"], registry=registry)
        self.rule_value = Gauge("orchestrator_rule_value", "Last measured value per rule",
                                ["model", "rule", "value"], registry=registry)
        self.probe_divergence = Gauge("orchestrator_watch_divergence",
                                      "Mean absolute output difference on the watcher's probes, served vs last "
                                      "verified version", ["model", "tensor"], registry=registry)
        self.production_samples = Counter("orchestrator_watch_production_samples",
                                          "Production outputs sampled from Triton's traces for drift",
                                          ["model"], registry=registry)
        # The probe budget (core/probe_budget.py): the share in force and what the probes really used.
        self.probe_budget = Gauge("orchestrator_probe_budget_ratio", "Share of the device's inference time the "
                                  "watcher's probes may use, on the series of the phase in force (bake after a "
                                  "switch, steady after it; the other phase reads 0)", ["model", "phase"],
                                  registry=registry)
        self.probe_cost = Gauge("orchestrator_probe_cost_seconds", "Device time one probe costs: Triton's compute "
                                "time per execution of each model a probe passes through (before any is "
                                "measured, the probe's round trip)", ["model"], registry=registry)
        self.probe_spent = Gauge("orchestrator_probe_spent_ratio", "Share of the device's time the probes used over "
                                 "the last minute", ["model"], registry=registry)
        self.probes = Counter("orchestrator_probes", "Golden probes sent to the served version", ["model"],
                              registry=registry)

    def initialise(self, model: str, summary: JournalSummary, rules: dict[str, Severity]) -> None:
        """Every labelled series an alert reads, present from the start (an alert on ``increase`` needs the
        zero before the first event), and the counters at the journal's counts, so that a restart of the
        watcher is no counter reset and an event while it was down is counted. Once per model and daemon."""
        if model in self._initialised:
            return
        self._initialised.add(model)
        counted = dict(summary.counts)
        for key in [k for k in counted if k.startswith("rollback:")]:
            _, trigger, rule = key.split(":", 2)
            self.rollbacks.labels(model, rule, trigger).inc(counted[key])
        for rule, severity in rules.items():
            self.rollbacks.labels(model, rule, "watch")
            if severity is not Severity.OFF:
                self.anomalies.labels(model, rule, severity.value)
        self.rollbacks.labels(model, "operator", "operator")
        for outcome in ("succeeded", "failed", "refused"):
            self.promotions.labels(model, outcome).inc(counted.get(f"promote:{outcome}", 0))
        self.quarantines.labels(model).inc(counted.get("quarantine", 0))
        for event in EVENTS:
            at = summary.last_time(event)
            self.last_event.labels(model, event).set(_unix(at) if at else 0.0)
        for reason in BLOCKED_REASONS:
            self.rollback_blocked.labels(model, reason).set(0)
        self.paused.labels(model).set(0)
        for phase in PHASES:
            self.probe_budget.labels(model, phase).set(0)
        self.probe_cost.labels(model).set(0)
        self.probe_spent.labels(model).set(0)
        self.probes.labels(model)

    def counted(self, model: str, record: Record, started: Record | None = None) -> None:
        """A final record seen in the journal (or the watcher's own): the counters and event times it moves."""
        for key, event in counted(record, started):
            kind, _, rest = key.partition(":")
            if kind == "rollback":
                trigger, rule = rest.split(":", 1)
                self.rollbacks.labels(model, rule, trigger).inc()
            elif kind == "promote":
                self.promotions.labels(model, rest).inc()
            else:
                self.quarantines.labels(model).inc()
            self.last_event.labels(model, event).set(_unix(record.time))

    def watch_rolled_back(self, model: str, rule: str, quarantined: bool) -> None:
        """The watcher's own rollback, counted as it happens (its journal record may wait for the disk)."""
        self.rollbacks.labels(model, rule, "watch").inc()
        self.last_event.labels(model, "rollback").set(time.time())
        if quarantined:
            self.quarantines.labels(model).inc()
            self.last_event.labels(model, "quarantine").set(time.time())

    def set_labels(self, model: str, labels: dict[str, int]) -> None:
        """The model's labels now; a label removed since the last call is removed from the exposition too."""
        shown = self._labels.get(model, set())
        for name in shown - set(labels):
            self.version_label.remove(model, name)
        for name, version in labels.items():
            self.version_label.labels(model, name).set(version)
        self._labels[model] = set(labels)

    def set_residency(self, model: str, served: int | None, resident: tuple[int, ...], known: list[int]) -> None:
        self.served_version.labels(model).set(served if served is not None else 0)
        for version in known:
            self.resident.labels(model, str(version)).set(1 if version in resident else 0)
