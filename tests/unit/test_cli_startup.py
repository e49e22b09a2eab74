"""`orchestrate` starts without the heavy libraries a command does not use.

Each check runs a fresh interpreter (the test process has imported everything already) and
reads back the names in its ``sys.modules``. Behaviour, not speed: bench/cli_bench.py times it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import classifier_only

ROOT = Path(__file__).resolve().parents[2]
# What `--help` and the command modules must not pull in (each costs 30-350 ms to import).
HEAVY = ("tritonclient.grpc", "tritonclient.http", "grpc", "gevent", "numpy", "cryptography", "requests",
         "prometheus_client")
# Run the CLI in this process, then report its modules; click ends with SystemExit on every path.
_RUN_CLI = """
import json, runpy, sys
sys.argv = ["orchestrate", *json.loads(sys.argv[1])]
try:
    runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("\\nMODULES " + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["COLUMNS"] = "200"  # help is wrapped to the terminal: one command per line
    return env


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def _cli_modules(*args: str) -> tuple[int, str, set[str]]:
    """(exit code, stdout before the report, modules imported) of `orchestrate ARGS` in a fresh interpreter."""
    done = _child(_RUN_CLI, json.dumps(args))
    out, _, report = done.stdout.rpartition("\nMODULES ")
    assert report, f"no report from the child: {done.stderr}"
    data = json.loads(report)
    return data["code"], out, set(data["modules"])


def _heavy(modules: set[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_importing_the_cli_imports_nothing_heavy() -> None:
    done = _child("import json, sys\nimport orchestrator.cli.main\nprint(json.dumps(sorted(sys.modules)))")
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert _heavy(modules) == []
    assert not [m for m in modules if m.startswith(("orchestrator.usecases", "orchestrator.delivery"))]


@pytest.mark.parametrize("args", [("--help",), ("keygen", "--help"), ("history", "--help"), ("shadow", "--help"),
                                  ("fetch", "--help"), ("watch", "--help")])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    code, _, modules = _cli_modules(*args)
    assert code == 0
    assert _heavy(modules) == []


def test_help_lists_every_command() -> None:
    from orchestrator.cli.main import app  # noqa: PLC0415 - the names the application registers

    assert isinstance(app, click.Group)
    names = set(app.commands)
    assert {"import", "promote", "rollback", "reconcile", "status", "history", "watch", "local-triton", "keygen",
            "sign", "fetch", "shadow"} <= names
    code, out, _ = _cli_modules("--help")
    assert code == 0
    commands = out.split("\nCommands:\n", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ")}
    assert names <= listed, f"missing from --help: {sorted(names - listed)}"


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "model_repository", tmp_path / "model_repository", ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", tmp_path / "orchestrator_state", ignore=classifier_only)
    return tmp_path / "model_repository"


def test_history_does_not_connect_to_triton(sample_copy: Path) -> None:
    """The journal is on disk: no tritonclient, not even with a URL that could never connect."""
    code, out, modules = _cli_modules("-r", str(sample_copy), "--url", "http://127.0.0.1:9", "history")
    assert code == 0
    assert out.startswith("TIME ")
    assert _heavy(modules, ("tritonclient", "gevent", "grpc", "requests", "prometheus_client", "numpy",
                            "cryptography")) == []


# Both ask Triton (rollback to the served version only checks that Triton holds it) and find it unreachable.
@pytest.mark.parametrize(("command", "says", "exit_code"), [
    (("status",), "Triton unreachable", 9),  # printed from the disk, then the exit code says Triton is not there
    (("rollback", "--to", "1", "--force"), "v1 already serves", 0)])
def test_status_and_rollback_reach_triton_without_tritonclient(sample_copy: Path, command: tuple[str, ...],
                                                               says: str, exit_code: int) -> None:
    """The control API goes over the stdlib (triton/control.py); tritonclient and gevent are for inference."""
    code, out, modules = _cli_modules("-r", str(sample_copy), "--url", "http://127.0.0.1:9", "--timeout", "1",
                                      *command)
    assert code == exit_code
    assert says in out
    assert "orchestrator.triton.control" in modules
    assert _heavy(modules, ("tritonclient", "gevent", "geventhttpclient", "grpc", "prometheus_client", "numpy",
                            "cryptography")) == []


def test_the_clis_copies_of_defaults_agree() -> None:
    """Option defaults the CLI repeats so that its modules need not import the use cases for --help."""
    from orchestrator.cli import shadow, trust  # noqa: PLC0415
    from orchestrator.delivery import fetch  # noqa: PLC0415
    from orchestrator.usecases import shadow as shadow_usecase  # noqa: PLC0415

    assert trust.DEFAULT_TIMEOUT_S == fetch.DEFAULT_TIMEOUT_S
    assert trust.MAX_DOWNLOAD_BYTES == fetch.MAX_DOWNLOAD_BYTES
    assert shadow.DEFAULT_SAMPLE_RATE == shadow_usecase.DEFAULT_SAMPLE_RATE


_SCHEMA_ORDER = """
import sys
if sys.argv[1] == "ours-first":
    from orchestrator.store import modelconfig
    assert "grpc" not in sys.modules and "tritonclient.grpc" not in sys.modules, "tritonclient.grpc imported"
    from tritonclient.grpc import model_config_pb2
else:
    from tritonclient.grpc import model_config_pb2
    from orchestrator.store import modelconfig
assert modelconfig.ModelConfig is model_config_pb2.ModelConfig
config = modelconfig.parse_config('name: "m" input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]')
assert config == model_config_pb2.ModelConfig(name="m", input=[model_config_pb2.ModelInput(
    name="x", data_type=model_config_pb2.TYPE_FP32, dims=[2])])
assert modelconfig.contract(config).inputs[0].datatype == "FP32"
print("ok")
"""


@pytest.mark.parametrize("order", ["ours-first", "tritonclients-first"])
def test_the_config_schema_loads_without_the_grpc_client_in_either_order(order: str) -> None:
    """modelconfig loads model_config_pb2 on its own; with tritonclient.grpc's copy too, one schema."""
    done = _child(_SCHEMA_ORDER, order)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
