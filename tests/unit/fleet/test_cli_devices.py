"""``orchestrate fleet enrol`` and ``fleet retire`` through the CLI, on a controller configuration with a broker
folder (no broker runs: these verbs write the store and the password file, and the broker reloads them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from orchestrator.cli.main import app
from orchestrator.delivery.signing import generate_keypair


@pytest.fixture
def config(tmp_path: Path) -> Path:
    assert CliRunner().invoke(app, ["fleet", "broker-config", str(tmp_path / "broker")]).exit_code == 0
    (tmp_path / "release_keys").mkdir()
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump({
        "store": "fleet.db", "key": "controller.key", "release_keys": "release_keys", "broker_dir": "broker",
        "broker": {"host": "127.0.0.1", "port": 1883, "username": "controller",
                   "password_file": "broker/controller.pass"}}))
    return path


def fleet(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["fleet", *args, "--config", str(config)])


def users(config: Path) -> list[str]:
    return [line.split(":")[0] for line in (config.parent / "broker" / "passwords").read_text().splitlines()]


def test_retire_takes_a_device_and_its_broker_user_out_and_lists_it_as_retired(config: Path) -> None:
    enrolled = fleet(config, "enrol", "cam-1", "cam-2", "--label", "hw=nx", "--credentials",
                     str(config.parent / "creds"))
    assert enrolled.exit_code == 0, enrolled.output
    assert {"cam-1", "cam-2"} <= set(users(config))
    retired = fleet(config, "retire", "cam-1", "--reason", "lens broken")
    assert retired.exit_code == 0, retired.output
    assert "retired cam-1 (lens broken); 2 retained topics to clear" in retired.output
    assert "cam-1" not in users(config) and "cam-2" in users(config) and "controller" in users(config)
    listed = fleet(config, "devices", "--retired")
    assert listed.exit_code == 0 and "cam-1" in listed.output and "lens broken" in listed.output
    remaining = fleet(config, "devices")
    assert "cam-2" in remaining.output and "cam-1" not in remaining.output


def test_retiring_a_device_not_enrolled_is_one_line_and_changes_nothing(config: Path) -> None:
    assert fleet(config, "enrol", "cam-1", "--credentials", str(config.parent / "creds")).exit_code == 0
    before = (config.parent / "broker" / "passwords").read_text()
    refused = fleet(config, "retire", "cam-1", "cam-9")
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines() == ["error: not enrolled: cam-9 (fleet devices lists those that are)"]
    assert (config.parent / "broker" / "passwords").read_text() == before
    assert "cam-1" in fleet(config, "devices").output


def test_a_controller_key_that_is_also_a_release_key_is_refused_in_one_line(config: Path) -> None:
    shutil.copyfile(config.parent / "controller.pub", config.parent / "release_keys" / "controller.pub")
    refused = fleet(config, "devices")
    assert refused.exit_code == 2
    (line,) = refused.output.strip().splitlines()
    assert line.startswith("error: key ") and "trusted both as the controller key" in line and \
        "and as a release key" in line and "orchestrate keygen" in line
