"""Rollback against a real Triton: fast when the target is resident, idempotent, verified targets only."""

from __future__ import annotations

import json

import pytest

from orchestrator.sample import Variant
from orchestrator.store.metafile import VersionStatus

from .conftest import Stack, stub_pids

pytestmark = pytest.mark.triton


def _promote_better(stack: Stack, packages) -> None:
    stack.triton().load("classifier")  # absorb Triton's one reload after start (see test_promote)
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    result = stack.cli("promote", "v2")
    assert result.returncode == 0, result.stderr


def test_rollback_to_resident_last_verified_needs_no_load(stack: Stack, packages):
    _promote_better(stack, packages)
    pids = stub_pids(stack.repository)
    v1 = next(path for path in pids if "/1/" in path)
    result = stack.cli("rollback", "--reason", "operator saw false alarms")
    assert result.returncode == 0, result.stderr
    assert "rollback v2 -> v1" in result.stdout
    assert stack.served_by_triton() == 1
    after = stub_pids(stack.repository)
    assert after[v1] == pids[v1] and set(after) <= set(pids)  # same process: nothing was loaded
    # The command returned once traffic moved; v2 unloads in the background.
    assert stack.triton().wait_unloaded("classifier", {2}, 15)
    assert stub_pids(stack.repository) == {v1: pids[v1]}
    store = stack.store()
    assert store.resident() == (1,)
    assert store.status(2) is VersionStatus.ROLLED_BACK
    assert store.attestation(2).verification.reason == "operator saw false alarms"
    last = store.journal.read().records[-1]
    assert (last.action, last.result, last.from_version, last.to_version) == ("rollback", "succeeded", 2, 1)
    assert last.reason == "operator saw false alarms"


def test_rollback_is_idempotent_and_refuses_unverified_targets(stack: Stack, packages):
    _promote_better(stack, packages)
    assert stack.cli("rollback").returncode == 0
    again = stack.cli("rollback", "--to", "v1")
    assert again.returncode == 0 and "already serves" in again.stdout
    nothing_left = stack.cli("rollback")
    assert nothing_left.returncode == 4
    assert "no verified version other than v1" in nothing_left.stderr
    unverified = stack.cli("rollback", "--to", "v2")
    assert unverified.returncode == 4 and "v2 is rolled_back, not verified" in unverified.stderr
    assert stack.served_by_triton() == 1
    forced = stack.cli("rollback", "--to", "v2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert stack.served_by_triton() == 2


def test_rollback_to_a_version_that_is_not_resident_loads_it_first(stack: Stack, packages):
    _promote_better(stack, packages)
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v3").returncode == 0
    store = stack.store()
    assert store.resident() == (2, 3)  # keep_resident 1: v1 was dropped
    result = stack.cli("rollback", "--to", "v1")
    assert result.returncode == 0, result.stderr
    assert stack.served_by_triton() == 1
    assert store.resident() == (1,)
    assert store.status(3) is VersionStatus.ROLLED_BACK


def test_status_and_history_render_tables_and_json(stack: Stack, packages):
    _promote_better(stack, packages)
    table = stack.cli("status")
    assert table.returncode == 0
    assert "serving v2 (verified), fallback v1, resident v1, v2 (in sync)" in table.stdout
    data = json.loads(stack.cli("status", "--json").stdout)[0]
    assert data["served"] == 2 and data["fallback"] == 1 and data["in_sync"] is True
    assert {row["version"]: row["triton_state"] for row in data["versions"]} == {1: "READY", 2: "READY"}
    history = stack.cli("history", "classifier")
    assert "promote    succeeded  v1 -> v2" in history.stdout
    records = json.loads(stack.cli("history", "--json").stdout)
    assert [(r["action"], r["result"]) for r in records] == [("import", "succeeded"), ("promote", "succeeded")]
    assert all({"time", "actor", "action", "from", "to", "reason", "result", "duration_ms"} <= set(r)
               for r in records)


def test_status_reports_an_unreachable_triton(stack: Stack):
    env = stack.env() | {"ORCH_TRITON_URL": "http://127.0.0.1:9"}
    result = stack.cli("--timeout", "1", "status", env=env)
    assert result.returncode == 9  # after printing what the disk says
    assert "serving v1" in result.stdout and "Triton unreachable" in result.stdout


def test_status_with_a_refused_admin_key_still_shows_the_disk(stack: Stack):
    result = stack.cli("status", env=stack.env() | {"ORCH_ADMIN_KEY": "wrong-key"})
    assert result.returncode == 8, result.stderr  # Triton refused the key: a setup error, said as such
    assert "serving v1" in result.stdout and "(403)" in result.stdout
    assert "wrong-key" not in result.stdout + result.stderr
