"""The orchestrator's own Prometheus series, on a registry passed in (one per test, one per daemon)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SWITCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DETECTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.served_version = Gauge("orchestrator_served_version", "Version the disk says is served",
                                    ["model"], registry=registry)
        self.resident = Gauge("orchestrator_resident_version", "1 for each version kept loaded (served or fallback)",
                              ["model", "version"], registry=registry)
        self.rollbacks = Counter("orchestrator_rollbacks", "Automatic rollbacks by the rule that caused them",
                                 ["model", "rule"], registry=registry)
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

    def set_residency(self, model: str, served: int | None, resident: tuple[int, ...], known: list[int]) -> None:
        self.served_version.labels(model).set(served if served is not None else 0)
        for version in known:
            self.resident.labels(model, str(version)).set(1 if version in resident else 0)
