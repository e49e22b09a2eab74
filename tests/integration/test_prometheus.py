"""A real Prometheus with the shipped scrape config and alert rules, pointed at a real watcher and a
real Triton: the watcher's first automatic rollback fires OrchestratorRolledBack through Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.daemons.watch import serve_metrics
from orchestrator.sample import write_faulty_package
from orchestrator.triton.embedded import free_ports
from tests.prometheus_server import PrometheusServer, scrape_config

from .conftest import MODEL, Stack, Traffic
from .watchkit import wait_for, watch_rollbacks, watching

pytestmark = pytest.mark.triton


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path)
    yield server
    server.stop()


def test_the_first_automatic_rollback_fires_the_rollback_alert_in_a_real_prometheus(
        stack: Stack, prometheus: PrometheusServer, tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    package = build_key.sign(write_faulty_package(tmp_path / "faulty-nan", "nan", after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    with watching(stack) as daemon:
        port = free_ports(1)[0]
        serve_metrics(daemon.registry, port, "127.0.0.1")
        prometheus.start(scrape_config({"triton": f"127.0.0.1:{stack.server.metrics_port}",
                                        "orchestrator": f"127.0.0.1:{port}"}))
        assert wait_for(lambda: prometheus.targets() == {"triton": "up", "orchestrator": "up"}, 20)
        # Before any rollback the watcher's series are there, at zero: the first one can fire.
        series = prometheus.api("query", query=f'orchestrator_rollbacks_total{{model="{MODEL}",trigger="watch"}}')
        assert series["result"] and {float(s["value"][1]) for s in series["result"]} == {0.0}
        assert prometheus.firing("OrchestratorRolledBack") == []
        with Traffic(stack.server.url, threads=2):
            stack.orchestrator().promote(MODEL, 2)
            assert wait_for(lambda: watch_rollbacks(stack), 30), "no automatic rollback"
        assert wait_for(lambda: prometheus.firing("OrchestratorRolledBack"), 20), prometheus.api("alerts")
    (alert,) = prometheus.firing("OrchestratorRolledBack")
    assert (alert["model"], alert["trigger"], alert["rule"], alert["severity"]) == (
        MODEL, "watch", "output_sanity", "warning")
    assert [a["model"] for a in prometheus.firing("OrchestratorVersionQuarantined")] == [MODEL]
    annotations = next(a["annotations"] for a in prometheus.api("alerts")["alerts"]
                       if a["labels"]["alertname"] == "OrchestratorRolledBack")
    assert annotations["summary"] == f"{MODEL} was rolled back (watch, output_sanity); v1 serves"
    assert annotations["runbook_url"].endswith("README.md#orchestratorrolledback")
    assert prometheus.firing("TritonDown") == [] and prometheus.firing("OrchestratorRollbackBlocked") == []
