"""A real Prometheus for the tests: the shipped scrape config and alert rules (docker/prometheus/), its
targets pointed at the servers a test started, intervals short enough for a test, on a free port."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
import yaml

from orchestrator.triton.embedded import free_ports
from tests.system_tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
_DISCOVERY = ("static_configs", "dns_sd_configs", "file_sd_configs")


def scrape_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """The shipped config with only the jobs named in ``targets`` (job -> host:port), each scraping that target
    as a static one (a job found by DNS in compose gets the test's address), every second."""
    config = yaml.safe_load(SHIPPED.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    assert {job["job_name"] for job in jobs} == set(targets), "a job the shipped config does not scrape"
    for job in jobs:
        for key in _DISCOVERY:
            job.pop(key, None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    config["scrape_configs"] = jobs
    return config


def wait_for(predicate: Callable[[], object], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class PrometheusServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, config: dict[str, Any]) -> None:
        binary = require_tool("prometheus")
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{port}"
        self.log = (self.folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.folder / 'prometheus.yml'}", f"--storage.tsdb.path={self.folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(self._ready, 30), (self.folder / "prometheus.log").read_text()[-2000:]

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

    def targets(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]

    def firing(self, name: str) -> list[dict[str, str]]:
        return [a["labels"] for a in self.alerts(name)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.log.close()
