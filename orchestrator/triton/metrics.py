"""Triton's own /metrics, scraped and reduced to what the rules need: per-version deltas, resources."""

from __future__ import annotations

import re
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

# Queue rejections are a capacity signal, not a broken model.
_IGNORED_FAILURE_REASONS = {"REJECTED"}
_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_duration_us")
_GAUGES = ("nv_cpu_utilization", "nv_cpu_memory_used_bytes", "nv_gpu_utilization", "nv_gpu_memory_used_bytes")
_READ = frozenset(_COUNTERS + _GAUGES)
_METRIC_LINE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?\s+\S+")


@dataclass(frozen=True)
class VersionCounters:
    success: float = 0.0
    failure: float = 0.0
    duration_us: float = 0.0  # request duration, queue included


@dataclass(frozen=True)
class Snapshot:
    versions: dict[tuple[str, int], VersionCounters]
    cpu_utilization: float | None
    memory_bytes: float | None
    gpu_utilization: float | None
    gpu_memory_bytes: float | None


def _read_lines(text: str) -> str:
    """The lines of the families ``parse`` reads: Triton's page has a dozen more per model (queue, compute,
    pending, ...) and the Prometheus parser is pure Python, a watcher's largest cost after its probes."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first and not (first.startswith("#") or _METRIC_LINE.match(first)):
        raise ValueError("not Prometheus text")  # an HTML page, a proxy's error: filtering would hide it
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            words = line.split(None, 3)
            if len(words) > 2 and words[1] in ("HELP", "TYPE") and words[2] in _READ:
                kept.append(line)
        elif line.split("{", 1)[0].split(" ", 1)[0] in _READ:
            kept.append(line)
    return "\n".join(kept) + "\n"


def parse(text: str) -> Snapshot:
    counters: dict[tuple[str, int], dict[str, float]] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(_read_lines(text)):
        for sample in family.samples:
            labels = sample.labels
            # Triton's counters lack the "_total" suffix; the parser adds it to counter samples.
            name = sample.name.removesuffix("_total") if family.type == "counter" else sample.name
            if name in _COUNTERS:
                try:
                    key = (labels["model"], int(labels["version"]))
                except (KeyError, ValueError):
                    continue
                if name.endswith("failure") and labels.get("reason") in _IGNORED_FAILURE_REASONS:
                    continue
                slot = counters.setdefault(key, {})
                slot[name] = slot.get(name, 0.0) + sample.value
            elif name in _GAUGES:
                gauges[name] = max(gauges.get(name, 0.0), sample.value)
    versions = {
        key: VersionCounters(values.get("nv_inference_request_success", 0.0),
                             values.get("nv_inference_request_failure", 0.0),
                             values.get("nv_inference_request_duration_us", 0.0))
        for key, values in counters.items()
    }
    return Snapshot(versions, gauges.get("nv_cpu_utilization"), gauges.get("nv_cpu_memory_used_bytes"),
                    gauges.get("nv_gpu_utilization"), gauges.get("nv_gpu_memory_used_bytes"))


def scrape(url: str, timeout_s: float) -> Snapshot | None:
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException:
        return None
    try:
        return parse(response.text)
    except (ValueError, TypeError, KeyError, IndexError):  # not Prometheus text (an HTML page, a proxy's error)
        return None


def delta(now: Snapshot, before: Snapshot, model: str, version: int) -> VersionCounters | None:
    """Counters accumulated between two scrapes; None when Triton restarted (counters went down)."""
    current = now.versions.get((model, version))
    previous = before.versions.get((model, version), VersionCounters())
    if current is None:
        return None
    diff = VersionCounters(current.success - previous.success, current.failure - previous.failure,
                           current.duration_us - previous.duration_us)
    if diff.success < 0 or diff.failure < 0 or diff.duration_us < 0:
        return None
    return diff
