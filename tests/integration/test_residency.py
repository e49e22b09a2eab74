"""No unverified version serves: a hand-edited config.pbtxt that a Triton restart (--load-model) loaded before
the orchestrator could act is rewritten, and the verified set loaded, by the next reconcile or watcher tick."""

from __future__ import annotations

import pytest

from orchestrator.core.journal import Record
from orchestrator.sample import Variant
from orchestrator.triton.protocol import TritonState

from .conftest import MODEL, Stack
from .watchkit import wait_for, watching

pytestmark = pytest.mark.triton


def _ready(stack: Stack) -> set[int]:
    client = stack.triton()
    try:
        return {v for v, e in client.states(MODEL).items() if e.state is TritonState.READY}
    finally:
        client.close()


def _guard_records(stack: Stack) -> list[Record]:
    return [r for r in stack.store().journal.read().records if r.action == "reconcile" and r.result == "repaired"]


def _hand_edit(stack: Stack, policy: str | None) -> None:
    """The version_policy line replaced by ``policy``, or removed (Triton then loads the newest folder)."""
    config = stack.repository / MODEL / "config.pbtxt"
    lines = [line for line in config.read_text().splitlines(keepends=True) if not line.startswith("version_policy")]
    config.write_text("".join(lines) + (f"{policy}\n" if policy else ""))


@pytest.mark.parametrize("policy", ["version_policy: { specific: { versions: [ 1, 2 ] } }", None],
                         ids=["lists-v2", "no-policy"])
def test_a_restart_that_loaded_a_hand_edit_is_undone_by_reconcile(stack: Stack, packages, policy: str | None):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0  # v2: filed, never verified
    _hand_edit(stack, policy)
    stack.restart()  # --load-model: Triton loads the edit before anything of ours runs
    assert stack.served_by_triton() == 2  # the gap this closes
    result = stack.cli("reconcile")
    assert result.returncode == 0, result.stderr
    assert "rewritten to v1" in result.stdout
    assert wait_for(lambda: _ready(stack) == {1}, 10), _ready(stack)
    assert stack.served_by_triton() == 1 and stack.store().resident() == (1,)
    [guarded] = _guard_records(stack)
    assert guarded.to_version == 1 and guarded.details["dropped"] == [{"version": 2, "status": "unverified"}]
    assert stack.store().versions() == [1, 2]  # nothing lost: v2 can still be promoted
    assert "serving v1" in stack.cli("status").stdout


def test_the_watchers_next_tick_undoes_a_restart_that_loaded_a_hand_edit(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0  # v2 serves, v1 its fallback
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0  # v3: filed, never verified
    _hand_edit(stack, "version_policy: { specific: { versions: [ 1, 2, 3 ] } }")
    stack.restart()
    assert stack.served_by_triton() == 3
    with watching(stack):
        assert wait_for(lambda: _ready(stack) == {1, 2}, 20), _ready(stack)
    assert stack.served_by_triton() == 2 and stack.store().resident() == (1, 2)
    [guarded] = _guard_records(stack)
    assert (guarded.actor, guarded.to_version) == ("watch", 2)
    assert guarded.reason == "config.pbtxt listed unverified v3 (hand-edited?); rewritten to v1, v2"
