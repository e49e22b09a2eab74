"""The orchestrator SIGKILLed between the steps of import, promote and rollback; the next command repairs."""

from __future__ import annotations

import pytest

from orchestrator.sample import Variant
from orchestrator.store.metafile import VersionStatus
from orchestrator.store.repository import candidate_name

from .conftest import MODEL, Stack

pytestmark = pytest.mark.triton


def _crash(stack: Stack, point: str, *args: str) -> None:
    result = stack.cli(*args, env=stack.env() | {"ORCH_CRASH_AT": point})
    assert result.returncode == -9, (point, result.stdout, result.stderr)


def _assert_consistent(stack: Stack, served: int, versions: list[int]) -> None:
    store = stack.store()
    assert store.versions() == versions  # no version lost
    assert store.served() == served
    ready = {v for v, e in stack.triton().states(MODEL).items() if e.state == "READY"}
    assert ready == set(store.resident())
    assert stack.served_by_triton() == served
    assert not (stack.repository / candidate_name(MODEL)).exists()
    assert not store.staging_leftovers()
    history = store.journal.read()
    assert history.unfinished() is None and history.problems == ()


def _import(stack: Stack, packages) -> None:
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0


@pytest.mark.parametrize(("point", "served", "outcome"), [
    ("promote:candidate_entry", 1, "aborted"),
    ("promote:candidate_loaded", 1, "aborted"),
    ("promote:verified", 1, "aborted"),
    ("promote:policy_written", 2, "repaired"),
    ("promote:loaded", 2, "repaired"),
])
def test_promote_killed_at_each_step_is_repaired(stack: Stack, packages, point, served, outcome):
    _import(stack, packages)
    _crash(stack, point, "promote", "v2")
    assert "interrupted: promote to v2" in stack.cli("status").stdout
    result = stack.cli("reconcile")
    assert result.returncode == 0, result.stderr
    _assert_consistent(stack, served, [1, 2])
    records = stack.store().journal.read().records
    assert [r.result for r in records if r.action == "promote" and r.result not in ("started", "step")] == [outcome]
    if served == 1:  # the next promote goes through
        again = stack.cli("promote", "v2")
        assert again.returncode == 0, again.stderr
        _assert_consistent(stack, 2, [1, 2])


@pytest.mark.parametrize(("point", "versions", "outcome"), [
    ("import:staged", [1], "aborted"),
    ("import:filed", [1, 2], "repaired"),
])
def test_import_killed_at_each_step_is_repaired(stack: Stack, packages, point, versions, outcome):
    _crash(stack, point, "import", str(packages[Variant.BETTER]))
    result = stack.cli("reconcile")
    assert result.returncode == 0, result.stderr
    _assert_consistent(stack, 1, versions)
    assert stack.store().journal.read().records[-1].result == outcome
    if versions == [1, 2]:
        assert stack.store().attestation(2).verification.status is VersionStatus.UNVERIFIED


@pytest.mark.parametrize("point", ["rollback:policy_written", "rollback:loaded"])
def test_rollback_killed_after_the_switch_is_completed(stack: Stack, packages, point):
    _import(stack, packages)
    assert stack.cli("promote", "v2").returncode == 0
    _crash(stack, point, "rollback")
    result = stack.cli("rollback")  # the operator simply runs it again
    assert result.returncode == 0, result.stderr
    _assert_consistent(stack, 1, [1, 2])
    assert stack.store().status(2) is VersionStatus.ROLLED_BACK
    results = [r.result for r in stack.store().journal.read().records if r.action == "rollback"]
    assert results[-1] == "repaired"


def test_second_command_on_a_busy_model_refuses_clearly(stack: Stack):
    from orchestrator.store.lock import model_lock  # noqa: PLC0415

    with model_lock(stack.store().state, MODEL, timeout_s=1):
        result = stack.cli("--lock-timeout", "0.5", "rollback")
    assert result.returncode == 7
    assert "model 'classifier' is busy" in result.stderr
