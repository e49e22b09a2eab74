"""Cumulative request counters per version, from Triton's statistics, which start again from zero.

Triton counts a version's requests since that version loaded: a restarted server, a version unloaded
and loaded again (a rollback to it, a reconcile) start it from zero. The controller sums counters
across devices and subtracts reports, so a device must report counters that only grow: ``CounterBook``
adds what a version had counted before each restart (a count lower than the last one seen) to what it
counts now. A version no longer loaded keeps its last totals. Pure: the agent feeds it what
``TritonAPI.execution_stats`` answered and saves ``to_json`` with its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.triton.protocol import ExecutionStats


@dataclass(frozen=True)
class Totals:
    requests: int = 0  # answered well or with an error
    errors: int = 0  # answered with an error by the model
    latency_ns: int = 0  # summed time inside Triton of the successful requests

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.requests + other.requests, self.errors + other.errors, self.latency_ns + other.latency_ns)

    def to_json(self) -> list[int]:
        return [self.requests, self.errors, self.latency_ns]

    @classmethod
    def from_json(cls, raw: Any) -> Totals:
        return cls(*(int(x) for x in raw))

    @classmethod
    def of(cls, stats: ExecutionStats) -> Totals:
        return cls(stats.requests, stats.fail_count, stats.success_ns)


class CounterBook:
    """Per model and version: the counts of earlier lives (``base``) and the last count of this one (``last``)."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.base: dict[tuple[str, int], Totals] = {}
        self.last: dict[tuple[str, int], Totals] = {}
        for row in (saved or {}).get("rows", []):
            model, version, base, last = row
            self.base[(str(model), int(version))] = Totals.from_json(base)
            self.last[(str(model), int(version))] = Totals.from_json(last)
        self.changed = False  # a restart was seen since the last save: worth saving now

    def observe(self, model: str, version: int, stats: ExecutionStats) -> Totals:
        key, now = (model, version), Totals.of(stats)
        last = self.last.get(key, Totals())
        if now.requests < last.requests or now.errors < last.errors or now.latency_ns < last.latency_ns:
            self.base[key] = self.base.get(key, Totals()) + last  # a new life of the version: keep the old one's
            self.changed = True
        self.last[key] = now
        return self.totals(model, version)

    def totals(self, model: str, version: int) -> Totals:
        key = (model, version)
        return self.base.get(key, Totals()) + self.last.get(key, Totals())

    def to_json(self) -> dict[str, Any]:
        keys = sorted(set(self.base) | set(self.last))
        return {"rows": [[m, v, self.base.get((m, v), Totals()).to_json(), self.last.get((m, v), Totals()).to_json()]
                         for m, v in keys]}
