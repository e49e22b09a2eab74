"""`orchestrate prune` as a subprocess: its output, one line on stderr for an error, the exit codes.

Triton is not reachable from the child (the twin lives in this process): prune then decides on the disk's
word, and says so on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orchestrator import faults
from orchestrator.cli.main import app
from orchestrator.errors import UnknownVersion
from orchestrator.store.lock import model_lock
from orchestrator.store.repository import PRUNED_RECORD
from tests.unit.test_cli_startup import _cli_modules, _heavy

from .conftest import ADMIN_KEY, MODEL, ROOT, Env


def _cli(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(ORCH_REPOSITORY=str(env.repository), ORCH_STATE_DIR=str(env.state), ORCH_ACTOR="pytest",
                   ORCH_TRITON_URL="http://127.0.0.1:9", ORCH_ADMIN_KEY=ADMIN_KEY,
                   **extra)
    return subprocess.run([sys.executable, "-m", "orchestrator", "--lock-timeout", "0.2", "prune", *args],
                          env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def serving_four(env: Env) -> Env:
    """v2..v4 filed, v4 promoted: v4 serves with v1 resident; v2 and v3 are prunable with --keep 1."""
    assert [env.import_() for _ in range(3)] == [2, 3, 4]
    assert env.orchestrator().promote(MODEL, 4).changed
    return env


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line; the only other line allowed is the warning that Triton was not asked."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    assert all("Triton was not asked" in line for line in lines[:-1]), result.stderr
    assert result.stdout == ""
    return errors[0]


def test_dry_run_then_prune_print_each_version_and_the_bytes(serving_four: Env) -> None:
    env = serving_four
    sizes = {v: env.store().version_bytes(v) for v in (2, 3)}
    dry = _cli(env, MODEL, "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"classifier: would prune v2 (unverified, {sizes[2]} bytes, {sizes[2] / 1024:.1f} KiB)",
        f"classifier: would prune v3 (unverified, {sizes[3]} bytes, {sizes[3] / 1024:.1f} KiB)",
        f"classifier: would free {sum(sizes.values())} bytes, {sum(sizes.values()) / 1024:.1f} KiB (2 version(s)); "
        f"kept v4 (served, resident, newest), v1 (resident, last verified)",
        "classifier: dry run, nothing changed",
    ]
    assert "Triton was not asked" in dry.stderr  # the child cannot reach the twin: the disk decides
    assert env.store().versions() == [1, 2, 3, 4]

    done = _cli(env, MODEL, "--keep", "1", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["dry_run"], doc["freed_bytes"], [p["version"] for p in doc["pruned"]]) == \
        (False, sum(sizes.values()), [2, 3])
    assert env.store().versions() == [1, 4] and env.store().pruned_versions() == (2, 3)

    again = _cli(env, MODEL, "--keep", "1")
    assert again.returncode == 0 and again.stdout.startswith("classifier: nothing to prune (keep 1); kept v4")


def test_errors_are_one_line_with_their_exit_code(serving_four: Env) -> None:
    env = serving_four
    unknown = _cli(env, "nope")
    assert unknown.returncode == 2 and "unknown model 'nope'" in _one_error_line(unknown)

    with model_lock(env.store().state, MODEL, timeout_s=1):  # another command holds the model
        busy = _cli(env, MODEL, "--keep", "1")
    assert busy.returncode == 7 and "is busy" in _one_error_line(busy)

    full = _cli(env, MODEL, "--keep", "1", **{faults.ENV_WRITE: PRUNED_RECORD})
    assert full.returncode == 11
    assert PRUNED_RECORD in _one_error_line(full) and "No space left on device" in full.stderr
    assert env.store().versions() == [1, 2, 3, 4]


def test_keep_below_one_is_refused_by_the_command_line(serving_four: Env) -> None:
    refused = _cli(serving_four, MODEL, "--keep", "0")
    assert refused.returncode == 2 and "--keep" in refused.stderr and refused.stdout == ""


def test_rollback_to_a_pruned_version_is_refused_in_one_line(serving_four: Env) -> None:
    env = serving_four
    assert _cli(env, MODEL, "--keep", "1").returncode == 0
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(ORCH_REPOSITORY=str(env.repository), ORCH_STATE_DIR=str(env.state), ORCH_ACTOR="pytest",
                   ORCH_TRITON_URL="http://127.0.0.1:9", ORCH_ADMIN_KEY=ADMIN_KEY)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rollback", MODEL, "--to", "v2", "--local"],
                            env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "has no version v2" in _one_error_line(result)


def test_the_refusal_names_that_the_version_was_pruned(serving_four: Env) -> None:
    env = serving_four
    env.orchestrator().prune(MODEL, keep=1)
    with pytest.raises(UnknownVersion, match="v2 was pruned"):
        env.orchestrator().rollback(MODEL, to=2, force=True)


def test_the_help_says_what_is_kept_and_gives_an_example() -> None:
    result = CliRunner().invoke(app, ["prune", "--help"], prog_name="orchestrate", terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for words in ("Usage: orchestrate prune [OPTIONS] [MODEL]", "the served version, every resident one",
                  "the last verified one (the rollback target)", "--keep N", "--dry-run", "--json",
                  "orchestrate prune classifier --keep 2 --dry-run", "retention: {enabled: true}"):
        assert words in text, words


def test_the_help_imports_nothing_heavy() -> None:
    code, _, modules = _cli_modules("prune", "--help")
    assert code == 0 and _heavy(modules) == []
