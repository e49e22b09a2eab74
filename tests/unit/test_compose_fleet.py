"""docker/compose.fleet.yaml (the fleet's control side) is a valid Compose file whose pieces agree with the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import app

from .test_compose import DOCKER, interpolate, schema_errors

FLEET = DOCKER / "compose.fleet.yaml"
ENV_FILE = DOCKER / "fleet.env.example"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(FLEET.read_text())


def _env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_the_fleet_compose_file_validates(raw: dict[str, Any]) -> None:
    assert schema_errors(raw) == []
    assert schema_errors(interpolate(raw, _env())) == []


def test_the_env_example_sets_every_required_variable() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", FLEET.read_text()))
    assert required <= set(_env()), f"missing from {ENV_FILE.name}: {sorted(required - set(_env()))}"


def test_the_controller_runs_fleet_serve_and_the_broker_reads_what_broker_config_writes(raw: dict[str, Any],
                                                                                          tmp_path: Path) -> None:
    services = interpolate(raw, _env())["services"]
    command = services["fleet-controller"]["command"]
    assert command[:2] == ["fleet", "serve"] and "--config" in command
    assert CliRunner().invoke(app, [*command, "--help"]).exit_code == 0
    broker = services["mosquitto"]
    (mount,) = broker["volumes"]
    assert mount["source"] == mount["target"] == _env()["FLEET_HOST_BROKER"]
    assert broker["command"][-1] == f"{mount['target']}/mosquitto.conf"
    result = CliRunner().invoke(app, ["fleet", "broker-config", str(tmp_path / "broker"), "--run-as", "mosquitto",
                                      "--log-stderr"])
    assert result.exit_code == 0, result.output
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "user mosquitto" in conf and "log_dest stderr" in conf
    assert (tmp_path / "broker" / "controller.pass").stat().st_mode & 0o077 == 0


def test_broker_config_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fleet", "broker-config", str(tmp_path), "--tls-ca", "ca.pem"])
    assert result.exit_code == 2 and "TLS needs --tls-ca, --tls-cert and --tls-key together" in result.output


def test_prometheus_scrapes_the_controller_where_compose_publishes_it(raw: dict[str, Any]) -> None:
    services = interpolate(raw, _env())["services"]
    scrape = yaml.safe_load((DOCKER / "prometheus" / "fleet.yml").read_text())
    (job,) = scrape["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and job["job_name"] == "orchestrator-fleet"
    assert any(str(p).endswith(f":{port}:{port}") for p in services[host]["ports"])
    mounts = {v.split(":")[0] for v in services["prometheus"]["volumes"] if isinstance(v, str)}
    assert "./prometheus/fleet.yml" in mounts and "./prometheus/alerts.yml" in mounts
