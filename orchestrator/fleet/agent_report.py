"""What a device's report says about one model, and the device's facts: read from the store and Triton.

The report (topic ``orch/v1/dev/{id}/report``, retained) is what the controller's gates sum
(``codec.device_view``): per version, cumulative requests, errors and latency (``counters.py``, from
Triton's statistics), automatic rollbacks away from it (the journal, mirrored by the agent), its golden
score from its attestation and that score minus the score of the version it replaced (both measured on
this device's golden set when it was promoted: ``accuracy`` / ``served_accuracy`` for a classifier, the
policy's ``map_metric`` and ``served_<metric>`` for a detector).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import __version__
from orchestrator.core.model import VersionStatus
from orchestrator.errors import OrchestratorError
from orchestrator.fleet.agent_state import ModelState
from orchestrator.fleet.counters import CounterBook
from orchestrator.store.attestation import ATTESTATIONS_DIR
from orchestrator.store.file_keys import Cached
from orchestrator.store.modelconfig import CONFIG_FILE
from orchestrator.store.policyfile import POLICY_FILE
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot
from orchestrator.triton.protocol import ExecutionStats, TritonAPI

log = logging.getLogger(__name__)

CLASSIFIER_METRIC = "accuracy"
DETECTOR_METRICS = ("map50_95", "map50")


def gated_metric(snap: ModelSnapshot) -> str:
    """The detector's mAP the promotion policy gates on (a broken policy.yaml: the default)."""
    try:
        return snap.policies.promotion.map_metric
    except OrchestratorError:
        return DETECTOR_METRICS[0]


def golden_of(snap: ModelSnapshot, version: int, metric: str) -> tuple[float | None, float | None]:
    """The version's golden score and that score minus its predecessor's, each None when unknown."""
    try:
        golden = snap.attestation(version).verification.golden
    except OrchestratorError:
        return None, None
    for key in (CLASSIFIER_METRIC, metric, *DETECTOR_METRICS):
        if key in golden:
            before = golden.get(f"served_{key}")
            return golden[key], (None if before is None else round(golden[key] - before, 6))
    return None, None


def read_stats(triton: TritonAPI, model: str) -> dict[int, ExecutionStats]:
    """Triton's counters per loaded version; none when Triton does not answer (the book keeps the last ones)."""
    try:
        return triton.execution_stats(model)
    except OrchestratorError as exc:
        log.info("%s: no statistics from Triton for the report (%s)", model, exc)
        return {}


@dataclass(frozen=True)
class StoreFacts:
    """What a model's entry of the report takes from its files (not the counters): versions, their statuses
    and golden scores, what the config serves. A device reads them again only when the files change
    (``report_facts``)."""

    versions: tuple[int, ...]
    statuses: Mapping[int, VersionStatus]
    golden: Mapping[int, tuple[float | None, float | None]]  # version -> (score, score minus its predecessor's)
    served: int | None
    resident: tuple[int, ...]


def store_facts(snap: ModelSnapshot) -> StoreFacts:
    metric = gated_metric(snap)
    statuses = snap.statuses()
    return StoreFacts(snap.versions, {v: statuses[v] for v in snap.versions},
                      {v: golden_of(snap, v, metric) for v in snap.versions}, snap.served, tuple(snap.resident))


def report_facts(store: ModelStore) -> Cached[StoreFacts]:
    """``store_facts`` of a fresh snapshot, read again only when a file it reads changed: the config and model
    folder (versions, metas: imports rename into it), policy.yaml and the state folder, the attestations,
    and the journal, which every write of the orchestrator's ends with. A thousand simulated devices spent
    half their CPU parsing these for reports that said the same thing every time."""
    return Cached(lambda: store_facts(store.snapshot()), store.folder / CONFIG_FILE, store.folder, store.state,
                  store.state / POLICY_FILE, store.state / ATTESTATIONS_DIR, store.journal.path)


def model_report(facts: StoreFacts, book: CounterBook, fleet: ModelState, model: str) -> dict[str, Any]:
    """One model's entry of the report; ``book`` already holds this report's statistics."""
    by_sha = {version: sha for sha, version in fleet.installed.items()}
    versions: dict[str, Any] = {}
    for version in facts.versions:
        totals = book.totals(model, version)
        golden, diff = facts.golden[version]
        away = fleet.away.get(version)
        versions[str(version)] = {
            "sha256": by_sha.get(version), "status": facts.statuses[version].value, "requests": totals.requests,
            "errors": totals.errors, "latency_ns": totals.latency_ns, "rollbacks": away.automatic if away else 0,
            "golden": golden, "golden_diff": diff}
    served = facts.served
    return {"served": served, "served_sha256": by_sha.get(served) if served is not None else None,
            "resident": list(facts.resident),
            "quarantined": [v for v in facts.versions if facts.statuses[v] is VersionStatus.QUARANTINED],
            "verified": [v for v in facts.versions if facts.statuses[v] is VersionStatus.VERIFIED],
            "versions": versions}


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def detect_facts(triton: TritonAPI, given: Mapping[str, str]) -> dict[str, str | None]:
    """What the device is: the configured facts over what can be found out cheaply (TensorRT's version from
    its installed distribution, without importing it; Triton's from its server metadata when the client asks)."""
    found: dict[str, str | None] = {"hardware": None, "agent": __version__,
                                    "tensorrt": _installed_version("tensorrt") or _installed_version("tensorrt-cu12")}
    metadata = getattr(triton, "server_metadata", None)
    version = None
    if callable(metadata):
        try:
            version = metadata().get("version")
        except OrchestratorError as exc:
            log.info("Triton's server metadata unavailable for the device's facts (%s)", exc)
    found["triton"] = str(version) if version is not None else None
    return {**found, **given}
