"""docker/compose.yaml is a valid Compose file, and its services, Prometheus and Grafana agree with each other.

Validation uses the Compose Specification's JSON schema as shipped (vendored) by the
``check-jsonschema`` package, and PromQL is parsed by ``promql-parser`` (promql_names.py): both
are in the ``test`` extra. Cross-references the schema cannot see (ports, paths, the admin key,
metric names) are checked here, against the code that reads them where there is such code: Triton's
entrypoint script runs for real, in front of a stand-in ``tritonserver`` that prints its flags.
The Grafana dashboard's own checks are in test_dashboard.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import requests
import yaml

from orchestrator import settings
from orchestrator.errors import UsageError
from orchestrator.triton.embedded import EmbeddedTriton, free_ports, restricted_flags, server_args

from .promql_names import KNOWN_METRICS, ROOT, dashboard_metric_names, load_dashboard, metric_names

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
JETSON_ARGS = ROOT / "triton_configs" / "server-jetson.args"
ENTRYPOINT = DOCKER / "triton-entrypoint.sh"
KEY = "k3y-for-tests"  # what the secret file holds; compose never sees it
SECRET = "admin_key"
ENV = {"ORCH_ADMIN_KEY_FILE_HOST": "/srv/orch/admin.key", "ORCH_HOST_REPOSITORY": "/srv/orch/model_repository",
       "ORCH_HOST_STATE": "/srv/orch/orchestrator_state"}


# --- helpers: Compose's interpolation, flags, mounts ----------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(LookupError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$, in every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VARIABLE.sub(substitute, value)


def flag_values(flags: list[str], name: str) -> list[str]:
    return [flag.split("=", 1)[1] for flag in flags if flag.startswith(f"{name}=")]


def one_flag(flags: list[str], name: str) -> str:
    values = flag_values(flags, name)
    assert len(values) == 1, f"{name} given {len(values)} times"
    return values[0]


def option_value(args: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {args}")


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in the long form (short "src:dst[:ro]" strings expanded)."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            result.append({"source": parts[0], "target": parts[1], "read_only": parts[2:] == ["ro"]})
        else:
            result.append(volume)
    return result


def mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    found = [m for m in mounts(service) if m["target"] == target]
    assert len(found) == 1, f"no single mount at {target}: {mounts(service)}"
    return found[0]


def host_file(source: str) -> Path:
    """A bind-mount source relative to the compose file's folder, as Compose resolves it."""
    return (DOCKER / source).resolve()


def compose_schema() -> dict[str, Any]:
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    return json.loads(text)


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as Compose sees it with docker/env.example's kind of settings."""
    return interpolate(raw, ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def triton_flags(services: dict[str, dict[str, Any]]) -> list[str]:
    """The flags the entrypoint script passes on to tritonserver (it adds the admin key's)."""
    command = services["triton"]["command"]
    assert command[0] == "sh" and mount_at(services["triton"], command[1])["source"] == "./triton-entrypoint.sh"
    return command[2:]


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    assert isinstance(document, dict) and set(document) == {"groups"}
    rules = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        rules += group["rules"]
    return rules


# --- the file itself -------------------------------------------------------------------------

def test_compose_file_validates_against_the_compose_specification(raw: dict[str, Any],
                                                                   compose: dict[str, Any]) -> None:
    assert schema_errors(raw) == []
    assert schema_errors(compose) == []


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda d: d["services"]["triton"].update(runtim="nvidia"), id="misspelt-key"),
    pytest.param(lambda d: d["services"]["orchestrator"]["depends_on"]["triton"].update(condition="service_up"),
                 id="unknown-depends-on-condition"),
    pytest.param(lambda d: d["services"]["triton"]["healthcheck"].update(intervall="5s"), id="healthcheck-typo"),
    pytest.param(lambda d: d["services"]["triton"].update(ports="8000:8000"), id="ports-not-a-list"),
    pytest.param(lambda d: d["secrets"][SECRET].update(fiel="/srv/orch/admin.key"), id="secret-typo"),
])
def test_the_validator_refuses_broken_compose_files(raw: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    assert schema_errors(broken), "the schema accepted a broken file: the validator checks nothing"


def test_every_required_setting_fails_loudly_when_missing(raw: dict[str, Any]) -> None:
    for name in ("ORCH_ADMIN_KEY_FILE_HOST", "ORCH_HOST_REPOSITORY", "ORCH_HOST_STATE"):
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw, {k: v for k, v in ENV.items() if k != name})
    with pytest.raises(MissingVariable, match="ORCH_ADMIN_KEY_FILE_HOST"):
        interpolate(raw, {**ENV, "ORCH_ADMIN_KEY_FILE_HOST": ""})  # no key would leave the control API open


def test_env_example_sets_every_variable_the_file_needs(raw: dict[str, Any]) -> None:
    example = dict(line.split("=", 1) for line in (DOCKER / "env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    interpolate(raw, example)  # raises when one is missing
    required = {m["name"] for m in _VARIABLE.finditer(COMPOSE.read_text()) if m["op"] and m["op"].endswith("?")}
    assert required <= set(example)


def test_references_between_services_resolve(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert {"triton", "orchestrator", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for secret in service.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in compose.get("secrets", {})
        for mount in mounts(service):
            source = mount.get("source", "")
            if mount.get("type") == "volume" or not source.startswith(("/", ".")):
                assert source in compose.get("volumes", {}), f"{name}: named volume {source!r} not declared"
            elif source.startswith("."):
                assert host_file(source).exists(), f"{name}: {source} does not exist beside compose.yaml"
    build = services["orchestrator"]["build"]
    assert (host_file(build["context"]) / build["dockerfile"]).is_file()
    assert services["orchestrator"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["grafana"]["profiles"] == ["grafana"]
    assert all("profiles" not in services[name] for name in ("triton", "orchestrator", "prometheus"))


# --- Triton ----------------------------------------------------------------------------------

def test_triton_flags_are_the_jetson_args_plus_the_repository(triton_flags: list[str]) -> None:
    assert Counter(triton_flags) == Counter([*server_args(JETSON_ARGS), "--model-repository=/models"])
    assert not [flag for flag in triton_flags if "restricted" in flag]  # the entrypoint adds those, with the key


def test_triton_image_and_gpu_are_the_jetson_ones(raw: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert raw["services"]["triton"]["image"] == "nvcr.io/nvidia/tritonserver:${TRITON_TAG:-24.08}-py3-igpu"
    assert services["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.08-py3-igpu"
    assert interpolate(raw, {**ENV, "TRITON_TAG": "24.10"})["services"]["triton"]["image"].endswith(":24.10-py3-igpu")
    assert services["triton"]["runtime"] == "nvidia"
    for name, service in services.items():  # rejected on Jetson
        assert "devices" not in service.get("deploy", {}).get("resources", {}).get("reservations", {}), name


def test_triton_healthcheck_asks_the_readiness_endpoint_on_the_http_port(services: dict[str, dict[str, Any]],
                                                                          triton_flags: list[str]) -> None:
    check = " ".join(services["triton"]["healthcheck"]["test"])
    assert "/v2/health/ready" in check
    assert f"/dev/tcp/127.0.0.1/{one_flag(triton_flags, '--http-port')}" in check
    assert one_flag(triton_flags, "--strict-readiness") == "true"  # ready = every loaded model READY


def test_published_ports_are_the_ports_triton_listens_on(services: dict[str, dict[str, Any]],
                                                        triton_flags: list[str]) -> None:
    published = {str(p).rsplit(":", 1)[1] for p in services["triton"]["ports"]}
    assert published == {one_flag(triton_flags, f"--{kind}-port") for kind in ("http", "grpc", "metrics")}



def test_every_published_port_is_on_loopback_unless_the_operator_opens_it(services: dict[str, dict[str, Any]]
                                                                         ) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 2)[0]
            assert host in ("127.0.0.1", "${TRITON_BIND:-127.0.0.1}"), f"{name} publishes {port} beyond loopback"
    env = (DOCKER / "env.example").read_text()
    assert "TRITON_BIND=127.0.0.1" in env


# --- the orchestrator --------------------------------------------------------------------------

def test_orchestrator_runs_the_watcher_through_the_cli_entrypoint(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)[1])  # type: ignore[index]
    (script,) = entry_points(group="console_scripts", name=entrypoint[0])  # what `pip install .` puts on PATH
    assert callable(script.load())
    command = services["orchestrator"]["command"]
    assert command[0] == "watch" and option_value(command, "--metrics-port") == "9400"
    # Inside the container every interface (Prometheus scrapes over the compose network); the CLI's own
    # default is loopback.
    assert option_value(command, "--metrics-address") == "0.0.0.0"


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ignore = [line for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context should be an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [src for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.M) for src in line.split()[:-1]]
    assert sources, "no COPY in the Dockerfile"
    for source in sources:
        assert source.rstrip("/") in allowed, f"COPY {source} but the dockerignore drops it"
        assert (ROOT / source).exists()
    # The image's locks (tests/unit/test_locks.py checks them), the package and its metadata; nothing else.
    assert allowed == {"requirements/pip.lock", "requirements/image.lock", "pyproject.toml", "orchestrator"}


def test_orchestrator_environment_is_what_its_valuesread(services: dict[str, dict[str, Any]],
                                                             triton_flags: list[str]) -> None:
    env = services["orchestrator"]["environment"]
    assert set(env) <= {settings.ENV_REPOSITORY, settings.ENV_STATE_DIR, settings.ENV_URL, settings.ENV_ADMIN_KEY,
                        settings.ENV_ADMIN_KEY_FILE, settings.ENV_DEFAULT_MODEL, settings.ENV_TENSORRT_VERSION,
                        settings.ENV_COMPUTE_CAPABILITY}
    url = urlparse(env[settings.ENV_URL])
    assert (url.scheme, url.hostname, str(url.port)) == ("http", "triton", one_flag(triton_flags, "--http-port"))
    assert mount_at(services["orchestrator"], env[settings.ENV_STATE_DIR])["source"] == ENV["ORCH_HOST_STATE"]


def test_model_repository_is_one_folder_at_one_path_in_both(services: dict[str, dict[str, Any]],
                                                            triton_flags: list[str]) -> None:
    path = one_flag(triton_flags, "--model-repository")
    assert services["orchestrator"]["environment"][settings.ENV_REPOSITORY] == path
    seen_by_triton = mount_at(services["triton"], path)
    seen_by_orchestrator = mount_at(services["orchestrator"], path)
    assert seen_by_triton["source"] == seen_by_orchestrator["source"] == ENV["ORCH_HOST_REPOSITORY"]
    assert seen_by_triton.get("read_only") is True  # only the orchestrator writes it
    assert not seen_by_orchestrator.get("read_only")


def test_the_orchestrator_reads_the_key_triton_requires(compose: dict[str, Any], services: dict[str, dict[str, Any]],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = services["orchestrator"]["environment"]
    key_file = Path(env[settings.ENV_ADMIN_KEY_FILE])
    assert key_file == Path("/run/secrets") / SECRET  # where compose mounts a secret of that name
    assert compose["secrets"][SECRET] == {"file": ENV["ORCH_ADMIN_KEY_FILE_HOST"]}
    # One file, as the operator writes it, read by the entrypoint (for Triton) and by the orchestrator's own code.
    secret = secret_file(tmp_path, KEY + "\n")
    started = run_entrypoint(tmp_path, secret)
    assert started.returncode == 0, started.stderr
    monkeypatch.delenv(settings.ENV_ADMIN_KEY, raising=False)
    monkeypatch.setenv(settings.ENV_ADMIN_KEY_FILE, str(secret))
    assert started.stdout.splitlines() == restricted_flags(settings.read_admin_key() or "")


# --- the admin key: a secret file, never in a command or an environment ----------------------------

def secret_file(tmp_path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "admin.key"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def run_entrypoint(tmp_path: Path, secret: Path | None, *flags: str, shell: str = "sh") -> subprocess.CompletedProcess:
    """docker/triton-entrypoint.sh for real, with a ``tritonserver`` on PATH that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "tritonserver"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if secret is not None:
        env["ORCH_ADMIN_KEY_SECRET"] = str(secret)  # instead of /run/secrets/admin_key
    return subprocess.run([shell, str(ENTRYPOINT), *flags], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def test_no_service_carries_the_key_in_its_command_or_environment(raw: dict[str, Any]) -> None:
    assert not re.search(r"\$\{?ORCH_ADMIN_KEY\b", COMPOSE.read_text()), "the key is interpolated into the file"
    # Even with the key in the shell that runs compose, nothing that `docker inspect` shows holds it.
    seen = interpolate(raw, {**ENV, settings.ENV_ADMIN_KEY: KEY})
    for name, service in seen["services"].items():
        for field in ("command", "entrypoint", "environment", "labels", "healthcheck"):
            assert KEY not in json.dumps(service.get(field, "")), f"{name}.{field} holds the key"
        assert settings.ENV_ADMIN_KEY not in service.get("environment", {}), name
    assert all("environment" not in secret for secret in seen["secrets"].values())  # files, not variables


def test_both_triton_and_the_orchestrator_mount_the_secret(services: dict[str, dict[str, Any]]) -> None:
    for name in ("triton", "orchestrator"):
        assert SECRET in services[name]["secrets"], name
    assert {name for name, service in services.items() if service.get("secrets")} == {"triton", "orchestrator"}


def test_the_entrypoint_is_an_executable_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    assert ENTRYPOINT.is_file() and os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    mount = mount_at(services["triton"], services["triton"]["command"][1])
    assert host_file(mount["source"]) == ENTRYPOINT and mount.get("read_only") is True


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_the_entrypoint_starts_triton_with_the_apis_locked_by_the_secrets_key(tmp_path: Path, triton_flags: list[str],
                                                                              shell: str, ending: str) -> None:
    started = run_entrypoint(tmp_path, secret_file(tmp_path, KEY + ending), *triton_flags, shell=shell)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [*triton_flags, *restricted_flags(KEY)]  # in order, nothing lost
    assert started.stderr == ""


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize(("content", "words"), [
    ("", "is empty"), ("\n", "is empty"), ("two words\n", "printable ASCII"), ("first\nsecond\n", "printable ASCII"),
    ("k\u00e9y".encode(), "ASCII"), ("k" * 4097, "larger than 4096 bytes"),
])
def test_the_entrypoint_refuses_a_secret_without_a_usable_key(tmp_path: Path, shell: str, content: str | bytes,
                                                              words: str) -> None:
    secret = secret_file(tmp_path, content)
    started = run_entrypoint(tmp_path, secret, "--model-repository=/models", shell=shell)
    assert started.returncode != 0 and started.stdout == ""  # tritonserver never ran
    (line,) = started.stderr.splitlines()
    assert words in line and str(secret) in line and "refusing to start Triton" in line
    with pytest.raises(UsageError, match=words):  # the orchestrator refuses the same files
        settings.read_key_file(secret)


def test_the_entrypoint_refuses_a_missing_secret_naming_where_compose_mounts_it(tmp_path: Path) -> None:
    missing = run_entrypoint(tmp_path, tmp_path / "nowhere")
    assert missing.returncode != 0 and missing.stdout == ""
    assert f"no admin key file at {tmp_path / 'nowhere'}" in missing.stderr
    assert "ORCH_ADMIN_KEY_FILE_HOST" in missing.stderr
    if not Path("/run/secrets", SECRET).exists():  # this machine is no container holding the secret
        default = run_entrypoint(tmp_path, None)
        assert default.returncode != 0 and f"no admin key file at /run/secrets/{SECRET}" in default.stderr


# --- Prometheus ----------------------------------------------------------------------------------

def _targets(config: dict[str, Any], job: str) -> list[str]:
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == job]
    assert len(jobs) == 1, f"no single scrape job {job!r}"
    return [t for static in jobs[0]["static_configs"] for t in static["targets"]]


def test_prometheus_scrapes_the_ports_the_services_serve_metrics_on(prometheus_config: dict[str, Any],
                                                                    services: dict[str, dict[str, Any]],
                                                                    triton_flags: list[str]) -> None:
    assert _targets(prometheus_config, "triton") == [f"triton:{one_flag(triton_flags, '--metrics-port')}"]
    port = option_value(services["orchestrator"]["command"], "--metrics-port")
    assert _targets(prometheus_config, "orchestrator") == [f"orchestrator:{port}"]
    assert f"127.0.0.1:{port}/metrics" in " ".join(services["orchestrator"]["healthcheck"]["test"])
    assert one_flag(server_args(JETSON_ARGS), "--metrics-port") == one_flag(triton_flags, "--metrics-port")


def test_prometheus_loads_the_mounted_config_and_rules(prometheus_config: dict[str, Any],
                                                       services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config_path = option_value(prometheus["command"], "--config.file")
    assert host_file(mount_at(prometheus, config_path)["source"]) == DOCKER / "prometheus" / "prometheus.yml"
    (rules_path,) = prometheus_config["rule_files"]
    assert host_file(mount_at(prometheus, rules_path)["source"]) == DOCKER / "prometheus" / "alerts.yml"


def test_alert_rules_are_well_formed_and_select_only_known_metrics(alert_rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in alert_rules]
    assert len(names) == len(set(names))
    for rule in alert_rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        unknown = metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{rule['alert']} selects unknown metrics {unknown}"


def test_alerts_cover_rollbacks_a_stalled_watcher_triton_down_and_failures(alert_rules: list[dict[str, Any]]) -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in alert_rules:
        for name in metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule["expr"])
    assert "orchestrator_rollbacks_total" in by_metric
    assert any("time()" in expr for expr in by_metric["orchestrator_last_check_timestamp_seconds"])
    assert any(re.search(r'up\{job="triton"\}\s*==\s*0', expr) for expr in by_metric["up"])
    assert "orchestrator_served_version" in by_metric
    assert "nv_inference_request_failure" in by_metric


@pytest.mark.parametrize("expr", ["rate(nv_inference_requests_failed[5m]) > 0", "orchestrator_rollback_total > 0"])
def test_the_metric_check_catches_a_misspelt_name(expr: str) -> None:
    assert metric_names(expr) - KNOWN_METRICS


def test_promql_syntax_errors_are_caught() -> None:
    with pytest.raises(ValueError):
        metric_names("rate(nv_inference_count) > 0")  # rate needs a range


# --- Grafana (the dashboard itself: test_dashboard.py) ---------------------------------------------

def test_grafana_provisioning_points_at_the_mounted_dashboards_and_prometheus(
        services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    provisioning = host_file(mount_at(grafana, "/etc/grafana/provisioning")["source"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    mounted = host_file(mount_at(grafana, provider["options"]["path"])["source"])
    assert (mounted / "triton-orchestrator.json").is_file()
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert urlparse(source["url"]).hostname == "prometheus" and urlparse(source["url"]).port == 9090
    assert any(str(p).endswith(":9090") for p in services["prometheus"]["ports"])


# --- against real programs, where this machine has them --------------------------------------------

def _compose_cli() -> list[str] | None:
    """Compose v2 (the plugin, or a standalone v2 binary); v1 (Debian 12's docker-compose) predates
    the Compose Specification's `name` and environment-sourced secrets and is end-of-life."""
    candidates = [[d, "compose"] for d in filter(None, [shutil.which("docker")])]
    candidates += [[c] for c in filter(None, [shutil.which("docker-compose")])]
    for cli in candidates:
        result = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, check=False)
        major = result.stdout.strip().lstrip("v").split(".")[0]
        if result.returncode == 0 and major.isdigit() and int(major) >= 2:
            return cli
    return None


def test_docker_compose_itself_accepts_the_file(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 on this machine; the schema and cross-reference tests cover the file")
    env_file = tmp_path / ".env"
    values = {**ENV, "ORCH_ADMIN_KEY_FILE_HOST": str(secret_file(tmp_path, KEY))}  # compose may look at it
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = subprocess.run([*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", "grafana",
                             "config", "--quiet"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def jetson_flagged_triton(tmp_path: Path, triton_flags: list[str]) -> Iterator[EmbeddedTriton]:
    """The embedded Triton started with the flags the compose file's entrypoint gives tritonserver
    (with its own ports and repository copy)."""
    repository = tmp_path / "model_repository"
    shutil.copytree(ROOT / "model_repository", repository)
    started = run_entrypoint(tmp_path, secret_file(tmp_path, KEY + "\n"), *triton_flags)
    assert started.returncode == 0, started.stderr
    placed = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port")
    extra = tuple(flag for flag in started.stdout.splitlines() if not flag.startswith(placed))
    server = EmbeddedTriton(repository, tmp_path / "triton", extra_args=extra, ports=tuple(free_ports(3)))
    server.start()
    try:
        yield server
    except BaseException:
        print(f"--- tritonserver log tail ---\n{server.log_tail()}")
        raise
    finally:
        server.kill()  # a throwaway server: nothing to unload cleanly


@pytest.mark.triton
def test_a_real_triton_takes_the_flags_and_exports_the_metrics_used(jetson_flagged_triton: EmbeddedTriton,
                                                                   alert_rules: list[dict[str, Any]]) -> None:
    import numpy as np  # noqa: PLC0415 - only this test sends a request

    server = jetson_flagged_triton
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/trace/setting"), ("GET", "/v2/logging"),
                         ("GET", "/v2/systemsharedmemory/status")):  # the restricted APIs are really restricted
        assert requests.request(method, server.url + path, timeout=5).status_code == 403, path
        assert requests.request(method, server.url + path, headers={"admin-key": KEY}, timeout=5).status_code == 200
    image = np.zeros((1, 3, 16, 16), np.float32)
    body = {"inputs": [{"name": "IMAGE", "shape": list(image.shape), "datatype": "FP32",
                        "data": image.ravel().tolist()}]}
    assert requests.post(f"{server.url}/v2/models/classifier/infer", json=body, timeout=30).status_code == 200
    exported = {line.split("{")[0].split()[0] for line in requests.get(server.metrics_url, timeout=5).text.splitlines()
                if line and not line.startswith("#")}
    used = {name for rule in alert_rules for name in metric_names(rule["expr"])}
    used |= dashboard_metric_names(load_dashboard())
    missing = {name for name in used if name.startswith("nv_")} - exported
    assert not missing, f"Triton exports no {missing}"
