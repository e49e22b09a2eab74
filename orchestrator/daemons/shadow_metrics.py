"""Prometheus series of a shadow run, on a registry passed in (the worker's own, or a test's).

``orchestrator_shadow_divergence`` here has a ``metric`` label; the watcher's exporter has a
two-label series of the same name, so the two must not share one registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.core.shadow_stats import ShadowPhase, ShadowReport

_DIVERGENCE_FIELDS = ("mean_abs_diff", "max_abs_diff", "mean_rel_diff", "max_rel_diff", "mean_cosine",
                      "min_cosine", "top1_agreement", "candidate_nan", "candidate_inf")
_DETECTION_FIELDS = ("matched_share", "count_diff", "candidate_per_frame", "served_per_frame")


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter("orchestrator_shadow_samples", "Production requests replayed to the candidate and "
                               "compared", ["model"], registry=registry)
        self.dropped = Counter("orchestrator_shadow_dropped", "Sampled requests not replayed (queue full, "
                               "unreadable or unsupported trace)", ["model"], registry=registry)
        self.errors = Counter("orchestrator_shadow_candidate_errors", "Replays the candidate failed or timed out",
                              ["model"], registry=registry)
        self.queue = Gauge("orchestrator_shadow_queue_depth", "Samples waiting for the candidate", ["model"],
                           registry=registry)
        self.divergence = Gauge("orchestrator_shadow_divergence", "Candidate vs served output, per tensor and "
                                "statistic", ["model", "tensor", "metric"], registry=registry)
        self.latency = Gauge("orchestrator_shadow_latency_ms", "Latency of served requests and of the candidate's "
                             "replays", ["model", "side", "stat"], registry=registry)
        self.running = Gauge("orchestrator_shadow_running", "1 while a shadow run replays traffic", ["model"],
                             registry=registry)

    def publish(self, report: ShadowReport) -> None:
        """Gauges from a report (counters are incremented as events happen)."""
        model = report.model
        for tensor, summary in report.tensors.items():
            for name in _DIVERGENCE_FIELDS:
                value = getattr(summary, name)
                if value is not None:
                    self.divergence.labels(model, tensor, name).set(float(value))
        if report.detection is not None and report.detection.frames:  # a detector's: tensor "detections"
            for name in _DETECTION_FIELDS:
                self.divergence.labels(model, "detections", name).set(float(getattr(report.detection, name)))
        for side, latency in (("served", report.served_latency), ("candidate", report.candidate_latency)):
            for stat in ("mean_ms", "p50_ms", "p99_ms"):
                self.latency.labels(model, side, stat.removesuffix("_ms")).set(getattr(latency, stat))
        self.running.labels(model).set(1 if report.phase == ShadowPhase.RUNNING else 0)
