"""`orchestrate rollback` handed to a running watcher, against a real Triton: the same rollback, journaled
with the operator's name, its refusals one line with their exit codes, and `--local` still in-process."""

from __future__ import annotations

import pytest

from orchestrator.daemons.command_socket import socket_path
from orchestrator.sample import Variant

from .conftest import Stack
from .watchkit import wait_for, watching

pytestmark = pytest.mark.triton

HANDED = "rollback done by the watcher"


def _serving_v2(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0


def test_rollback_is_done_by_the_running_watcher(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    _serving_v2(stack, packages)
    with watching(stack):
        assert stack.state is not None
        path = socket_path(stack.state)
        assert wait_for(path.exists, 10), "the watcher never listened"
        result = stack.cli("-v", "rollback", "--reason", "bad detections on line 3")
        assert result.returncode == 0, result.stderr
        assert "rollback v2 -> v1: v1 serving after" in result.stdout
        assert HANDED in result.stderr
        assert stack.served_by_triton() == 1
        last = [r for r in stack.store().journal.read().records if r.action == "rollback"][-1]
        assert (last.result.value, last.actor, last.reason) == ("succeeded", "pytest", "bad detections on line 3")

        refused = stack.cli("-v", "rollback", "--to", "7")
        assert refused.returncode == 2 and HANDED not in refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "7" in refused.stderr

        assert stack.cli("promote", "v2").returncode == 0
        local = stack.cli("-v", "rollback", "--local")
        assert local.returncode == 0 and HANDED not in local.stderr and stack.served_by_triton() == 1
    assert not path.exists()  # the watcher removed its socket when it stopped


def test_without_a_watcher_rollback_runs_in_its_own_process(stack: Stack, packages) -> None:  # type: ignore[no-untyped-def]
    _serving_v2(stack, packages)
    result = stack.cli("-v", "rollback")
    assert result.returncode == 0 and HANDED not in result.stderr
    assert stack.served_by_triton() == 1
    assert stack.store().served() == 1
