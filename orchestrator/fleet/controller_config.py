"""The controller's configuration file (YAML), checked once at start with the setting named on error.

    store: /var/lib/orchestrator-fleet/fleet.db       # the controller's SQLite store
    broker: {host: mqtt.plant1, port: 8883, username: controller, password_file: /etc/orchestrator-fleet/mqtt.pass,
             tls: {ca: ca.pem, cert: controller.pem, key: controller.key.pem}}
    key: /etc/orchestrator-fleet/controller.key        # signs every desired document and notice
    release_keys: /etc/orchestrator-fleet/release_keys # *.pub: the keys whose signed plans may start a rollout
    broker_dir: /etc/mosquitto/orchestrator            # optional: `fleet enrol` writes device users there
    gate_interval_s: 1                                 # one step of every rollout this often
    metrics: {address: 0.0.0.0, port: 9400}            # optional: the controller's /metrics

Relative paths are relative to the configuration file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UsageError
from orchestrator.fleet.transport import BrokerAddress, TlsFiles

ENV_CONFIG = "ORCH_FLEET_CONFIG"
_KEYS = {"store", "broker", "key", "release_keys", "broker_dir", "gate_interval_s", "metrics"}


@dataclass(frozen=True)
class ControllerConfig:
    store: Path
    broker: BrokerAddress
    key: Path
    release_keys: Path
    broker_dir: Path | None = None
    gate_interval_s: float = 1.0
    metrics: tuple[str, int] | None = None


def _path(base: Path, raw: Any, where: str) -> Path:
    if not isinstance(raw, str) or not raw:
        raise UsageError(f"{where} must be a path")
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else base / path


def read_secret(path: Path, where: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read {path}: {exc.strerror}") from exc


def broker_address(raw: Any, base: Path, where: str) -> BrokerAddress:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping with host, port and username")
    unknown = sorted(set(raw) - {"host", "port", "username", "password_file", "tls"})
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}")
    port = raw.get("port")
    if not isinstance(raw.get("host"), str) or not isinstance(port, int) or not 0 < port < 65536:
        raise UsageError(f"{where}: host (a name) and port (1-65535) are required")
    if not isinstance(raw.get("username"), str):
        raise UsageError(f"{where}.username is required")
    password = None
    if raw.get("password_file") is not None:
        password = read_secret(_path(base, raw["password_file"], f"{where}.password_file"), f"{where}.password_file")
    tls = None
    if raw.get("tls") is not None:
        files = raw["tls"]
        if not isinstance(files, dict) or set(files) != {"ca", "cert", "key"}:
            raise UsageError(f"{where}.tls must give ca, cert and key")
        tls = TlsFiles(*(_path(base, files[k], f"{where}.tls.{k}") for k in ("ca", "cert", "key")))
    return BrokerAddress(raw["host"], port, raw["username"], password, tls)


def load_controller_config(path: Path | None) -> ControllerConfig:
    if path is None:
        env = os.environ.get(ENV_CONFIG)
        if not env:
            raise UsageError(f"name the controller's configuration: --config FILE or {ENV_CONFIG}")
        path = Path(env)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the fleet configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must be a mapping")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UsageError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    missing = sorted({"store", "broker", "key", "release_keys"} - set(raw))
    if missing:
        raise UsageError(f"{path}: {missing[0]!r} is required")
    base = path.parent
    interval = raw.get("gate_interval_s", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.05 <= interval <= 3600:
        raise UsageError(f"{path}: gate_interval_s must be a number of seconds from 0.05 to 3600")
    metrics = None
    if raw.get("metrics") is not None:
        m = raw["metrics"]
        if not isinstance(m, dict) or not isinstance(m.get("port"), int):
            raise UsageError(f"{path}: metrics must give a port (and optionally an address)")
        metrics = (str(m.get("address", "127.0.0.1")), int(m["port"]))
    return ControllerConfig(store=_path(base, raw["store"], "store"),
                            broker=broker_address(raw["broker"], base, "broker"),
                            key=_path(base, raw["key"], "key"), release_keys=_path(base, raw["release_keys"],
                                                                                  "release_keys"),
                            broker_dir=_path(base, raw["broker_dir"], "broker_dir") if raw.get("broker_dir") else None,
                            gate_interval_s=float(interval), metrics=metrics)
