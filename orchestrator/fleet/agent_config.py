"""``orchestrate watch --fleet CONF``: the device's fleet configuration, read and checked once at start.

    device: cam-017
    broker: {host: 10.0.0.5, port: 8883, username: cam-017, password_file: /etc/orchestrator/mqtt.pass,
             tls: {ca: ca.pem, cert: cam-017.pem, key: cam-017.key}}    # tls optional
    controller_keys: /etc/orchestrator/controller_keys   # folder of *.pub: whose desired documents and notices
    labels: {site: plant-1, hw: jetson-xavier-nx, role: canary}
    facts: {hardware: jetson-xavier-nx}     # over what the agent finds out itself (TensorRT, Triton, its version)
    models: [classifier]                    # the models the fleet may drive (default: every managed model)
    report_s: 10
    resend_s: 5
    journal_s: 1                            # how often the journals are read for the controller

Relative paths are relative to the file's folder. With ``tls`` the broker takes the client's certificate
as its identity (no password needed); without it a password file is required (no anonymous devices).
Every problem is one ``UsageError`` line naming the file and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from orchestrator.delivery.signing import load_trusted_keys
from orchestrator.errors import UsageError
from orchestrator.fleet import topics
from orchestrator.fleet.agent import AgentOptions
from orchestrator.fleet.transport import BrokerAddress, TlsFiles

FIELDS = ("device", "broker", "controller_keys", "labels", "facts", "models", "report_s", "resend_s", "journal_s")
BROKER_FIELDS = ("host", "port", "username", "password_file", "tls")
TLS_FIELDS = ("ca", "cert", "key")
PLAIN_PORT, TLS_PORT = 1883, 8883


@dataclass(frozen=True)
class AgentConfig:
    options: AgentOptions
    address: BrokerAddress
    controller_keys: Mapping[str, Ed25519PublicKey]
    source: Path


class _Reader:
    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, message: str) -> UsageError:
        return UsageError(f"fleet configuration {self.source}: {message}")

    def mapping(self, raw: Any, where: str, known: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be a mapping")
        unknown = sorted(str(k) for k in raw if known is not None and k not in known)
        if unknown:
            raise self.fail(f"{where} has unknown fields {', '.join(unknown)} (known: {', '.join(known or ())})")
        return raw

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(f"{where} must be a non-empty string")
        return raw.strip()

    def strings(self, raw: Any, where: str) -> dict[str, str]:
        values = self.mapping(raw if raw is not None else {}, where)
        found = {}
        for key, value in values.items():
            if not isinstance(key, str) or isinstance(value, (dict, list, bool)) or value is None:
                raise self.fail(f"{where} must map names to plain values ({key!r}: {value!r})")
            found[key] = str(value)
        return found

    def seconds(self, raw: Any, where: str, default: float) -> float:
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
            raise self.fail(f"{where} must be a positive number of seconds, not {raw!r}")
        return float(raw)

    def path(self, raw: Any, where: str, folder: bool = False) -> Path:
        path = Path(self.text(raw, where)).expanduser()
        path = path if path.is_absolute() else self.source.parent / path
        if not (path.is_dir() if folder else path.is_file()):
            raise self.fail(f"{where} {path} is not a {'folder' if folder else 'readable file'}")
        return path


def load_config(path: Path) -> AgentConfig:
    reader = _Reader(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise reader.fail(f"cannot read it: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise reader.fail(f"not YAML ({' '.join(str(exc).split())})") from exc
    doc = reader.mapping(raw, "the file", FIELDS)
    device = reader.text(doc.get("device"), "device")
    if not topics.valid_device_id(device):
        raise reader.fail(f"device {device!r} is not a device id: 1-64 letters, digits, '.', '_' or '-', starting "
                          f"with a letter or digit (it is the MQTT user name and client id)")
    models = doc.get("models")
    if models is not None and (not isinstance(models, list) or not models
                               or not all(isinstance(m, str) and m for m in models)):
        raise reader.fail("models must be a list of model names")
    options = AgentOptions(device, labels=reader.strings(doc.get("labels"), "labels"),
                           facts=reader.strings(doc.get("facts"), "facts"),
                           models=tuple(models) if models else None,
                           report_s=reader.seconds(doc.get("report_s"), "report_s", 10.0),
                           resend_s=reader.seconds(doc.get("resend_s"), "resend_s", 5.0),
                           journal_s=reader.seconds(doc.get("journal_s"), "journal_s", 1.0))
    keys_folder = reader.path(doc.get("controller_keys"), "controller_keys", folder=True)
    try:
        keys = load_trusted_keys(keys_folder)
    except UsageError as exc:
        raise reader.fail(f"controller_keys: {exc}") from exc
    if not keys:
        raise reader.fail(f"controller_keys {keys_folder} holds no *.pub key: the device would obey nobody")
    return AgentConfig(options, _broker(reader, doc.get("broker"), device), keys, path)


def _broker(reader: _Reader, raw: Any, device: str) -> BrokerAddress:
    broker = reader.mapping(raw, "broker", BROKER_FIELDS)
    host = reader.text(broker.get("host"), "broker.host")
    tls = None
    if broker.get("tls") is not None:
        files = reader.mapping(broker["tls"], "broker.tls", TLS_FIELDS)
        tls = TlsFiles(*(reader.path(files.get(name), f"broker.tls.{name}") for name in TLS_FIELDS))
    port = broker.get("port", TLS_PORT if tls else PLAIN_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise reader.fail(f"broker.port must be a port number, not {port!r}")
    username = reader.text(broker.get("username", device), "broker.username")
    password = None
    if broker.get("password_file") is not None:
        secret = reader.path(broker["password_file"], "broker.password_file")
        try:
            password = secret.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise reader.fail(f"broker.password_file {secret}: cannot read it ({exc})") from exc
        if not password:
            raise reader.fail(f"broker.password_file {secret} is empty")
    elif tls is None:
        raise reader.fail("broker needs a password_file, or tls with a client certificate: the broker takes no "
                          "anonymous devices")
    return BrokerAddress(host, port, username, password, tls)
