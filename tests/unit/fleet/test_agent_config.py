"""``orchestrate watch --fleet CONF``: the configuration is checked once at start, each problem one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.delivery.signing import generate_keypair
from orchestrator.errors import UsageError
from orchestrator.fleet.agent_config import load_config


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    generate_keypair(tmp_path / "controller.key", tmp_path / "keys" / "controller.pub")
    (tmp_path / "mqtt.pass").write_text("s3cret\n")
    for name in ("ca.pem", "cam.pem", "cam.key"):
        (tmp_path / name).write_text("pem")
    return tmp_path


def write(folder: Path, **changes: Any) -> Path:
    conf: dict[str, Any] = {"device": "cam-017", "broker": {"host": "127.0.0.1", "password_file": "mqtt.pass"},
                            "controller_keys": "keys", "labels": {"site": "plant-1", "hw": "jetson-xavier-nx"},
                            "facts": {"hardware": "jetson-xavier-nx"}, "models": ["classifier"]}
    for key, value in changes.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_a_good_configuration(folder: Path) -> None:
    conf = load_config(write(folder, report_s=2, labels={"site": "plant-1", "line": 3}))
    options, address = conf.options, conf.address
    assert (options.device, options.models, options.report_s, options.resend_s) == ("cam-017", ("classifier",), 2.0,
                                                                                    5.0)
    assert options.labels == {"site": "plant-1", "line": "3"} and options.facts == {"hardware": "jetson-xavier-nx"}
    assert (address.host, address.port, address.username, address.password, address.tls) == (
        "127.0.0.1", 1883, "cam-017", "s3cret", None)
    assert len(conf.controller_keys) == 1


def test_tls_takes_the_certificate_and_its_port(folder: Path) -> None:
    conf = load_config(write(folder, broker={"host": "broker.plant-1", "tls": {"ca": "ca.pem", "cert": "cam.pem",
                                                                              "key": "cam.key"}}, models=None))
    assert conf.address.port == 8883 and conf.address.password is None and conf.address.tls is not None
    assert conf.address.tls.ca == folder / "ca.pem" and conf.options.models is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"device": None}, "device must be a non-empty string"),
    ({"device": "cam/017"}, "is not a device id"),
    ({"colour": "blue"}, "unknown fields colour"),
    ({"broker": {"host": "h"}}, "needs a password_file, or tls"),
    ({"broker": {"host": "h", "password_file": "nope.pass"}}, "broker.password_file"),
    ({"broker": {"host": "h", "password_file": "mqtt.pass", "port": 70000}}, "broker.port must be a port"),
    ({"broker": {"host": "h", "tls": {"ca": "ca.pem"}}}, "broker.tls.cert"),
    ({"controller_keys": "nowhere"}, "controller_keys"),
    ({"report_s": 0}, "report_s must be a positive number"),
    ({"labels": ["site"]}, "labels must be a mapping"),
    ({"models": "classifier"}, "models must be a list"),
])
def test_each_problem_is_one_line_naming_the_field(folder: Path, changes: dict[str, Any], message: str) -> None:
    path = write(folder, **changes)
    with pytest.raises(UsageError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_keys_folder_without_keys_is_refused(folder: Path) -> None:
    (folder / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no"):
        load_config(write(folder, controller_keys="empty"))


def test_watch_with_a_bad_fleet_configuration_exits_2_with_one_line(folder: Path) -> None:
    path = write(folder, device=None)
    result = CliRunner().invoke(app, ["--repository", str(folder / "repo"), "--url", "http://127.0.0.1:9",
                                      "watch", "--fleet", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: fleet configuration {path}: device must be a non-empty "
                                                  f"string"]
