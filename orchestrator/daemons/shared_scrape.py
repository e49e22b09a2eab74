"""One scrape of Triton's /metrics for all the watchers of a daemon.

Each model's watcher scrapes the same page (every model's series are on it) once per
``metrics_interval_s``; with ten models that was ten fetches and parses a second, the largest
cost after config.pbtxt. Watchers that look within ``MAX_AGE_S`` of one another now share one
snapshot. Their rules see the same counters: each still judges the difference between two
snapshots it was given, only its notion of when a snapshot was taken is off by at most
``MAX_AGE_S``.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.triton import metrics as triton_metrics

MAX_AGE_S = 0.1


class SharedScrape:
    """``(url, timeout_s) -> Snapshot | None``, as ``triton.metrics.scrape``; a failed scrape is shared too, so
    that a refused port is not asked once per model."""

    def __init__(self, clock: Callable[[], float], max_age_s: float = MAX_AGE_S) -> None:
        self.clock, self.max_age_s = clock, max_age_s
        self.last: dict[str, tuple[float, triton_metrics.Snapshot | None]] = {}

    def __call__(self, url: str, timeout_s: float) -> triton_metrics.Snapshot | None:
        now = self.clock()
        seen = self.last.get(url)
        if seen is not None and 0 <= now - seen[0] <= self.max_age_s:
            return seen[1]
        snapshot = triton_metrics.scrape(url, timeout_s=timeout_s)
        self.last[url] = (self.clock(), snapshot)
        return snapshot
