"""A real Prometheus with the shipped scrape config and alert rules, pointed at a real watcher and a
real Triton: the watcher's first automatic rollback fires OrchestratorRolledBack through Prometheus."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from orchestrator.daemons.watch import serve_metrics
from orchestrator.sample import write_faulty_package
from orchestrator.triton.embedded import free_ports
from tests.system_tools import require_tool

from .conftest import MODEL, Stack, Traffic
from .watchkit import wait_for, watch_rollbacks, watching

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULES = ROOT / "docker" / "prometheus" / "alerts.yml"


def scrape_config(triton_metrics: str, orchestrator_metrics: str) -> dict[str, Any]:
    """The shipped config, its targets pointed at these servers, its intervals short enough for a test."""
    config = yaml.safe_load(SHIPPED.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    targets = {"triton": triton_metrics, "orchestrator": orchestrator_metrics}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = require_tool("prometheus")

    class Prometheus:
        url = ""
        process: subprocess.Popen[bytes] | None = None

        def start(self, config: dict[str, Any]) -> None:
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_ports(1)[0]
            self.url = f"http://127.0.0.1:{port}"
            self.log = (tmp_path / "prometheus.log").open("wb")
            self.process = subprocess.Popen(
                [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=self.log, stderr=subprocess.STDOUT)
            assert wait_for(self._ready, 30), (tmp_path / "prometheus.log").read_text()[-2000:]

        def _ready(self) -> bool:
            assert self.process is not None and self.process.poll() is None, "prometheus exited"
            try:
                return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        def api(self, path: str, **params: str) -> Any:
            answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
            assert answer["status"] == "success", answer
            return answer["data"]

        def firing(self, name: str) -> list[dict[str, str]]:
            return [a["labels"] for a in self.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == name and a["state"] == "firing"]

    server = Prometheus()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait(10)
        server.log.close()


def test_the_first_automatic_rollback_fires_the_rollback_alert_in_a_real_prometheus(
        stack: Stack, prometheus: Any, tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    package = build_key.sign(write_faulty_package(tmp_path / "faulty-nan", "nan", after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    with watching(stack) as daemon:
        port = free_ports(1)[0]
        serve_metrics(daemon.registry, port, "127.0.0.1")
        prometheus.start(scrape_config(f"127.0.0.1:{stack.server.metrics_port}", f"127.0.0.1:{port}"))
        assert wait_for(lambda: {t["labels"]["job"]: t["health"] for t in prometheus.api("targets")["activeTargets"]}
                        == {"triton": "up", "orchestrator": "up"}, 20)
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
