"""Disk is the truth: after Triton restarts, the version on disk serves again."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sample import Variant

from .conftest import MODEL, Stack

pytestmark = pytest.mark.triton


def _restart(stack: Stack, load_models: tuple[str, ...]) -> None:
    stack.restart(load_models)


def test_killed_triton_comes_back_serving_the_promoted_version(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    _restart(stack, load_models=(MODEL,))
    assert stack.served_by_triton() == 2
    assert {v: e.state for v, e in stack.triton().states(MODEL).items()} == {1: "READY", 2: "READY"}
    status = stack.cli("status")
    assert "serving v2 (verified), fallback v1, resident v1, v2 (in sync)" in status.stdout


def test_triton_restarted_without_the_model_is_reconciled(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    _restart(stack, load_models=())
    assert "Triton differs from disk" in stack.cli("status").stdout
    result = stack.cli("reconcile")
    assert result.returncode == 0, result.stderr
    assert "loaded [1, 2] into Triton (it held [])" in result.stdout
    assert stack.served_by_triton() == 2
    last = stack.store().journal.read().records[-1]
    assert (last.action, last.result, last.to_version) == ("reconcile", "succeeded", 2)
    assert stack.cli("reconcile").stdout.strip() == "in sync: nothing to do"


def test_reconcile_with_triton_down_fails_clearly(stack: Stack):
    regions = f"{stack.server.shm_prefix}*"
    assert list(Path("/dev/shm").glob(regions)), "the served version's stub has its shared memory"
    stack.server.kill()
    assert list(Path("/dev/shm").glob(regions)) == [], "a killed server leaves no shared memory behind"
    result = stack.cli("--timeout", "1", "reconcile")
    assert result.returncode == 9
    assert f"Triton at {stack.server.url} is unreachable" in result.stderr


def test_a_config_without_version_policy_never_lets_a_restart_serve_an_unverified_version(stack: Stack, packages):
    config = stack.repository / MODEL / "config.pbtxt"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("version_policy")))  # Triton's default: the latest
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert "specific" in config.read_text()
    _restart(stack, load_models=(MODEL,))
    assert stack.served_by_triton() == 1
    assert {v: e.state for v, e in stack.triton().states(MODEL).items() if e.state == "READY"} == {1: "READY"}
