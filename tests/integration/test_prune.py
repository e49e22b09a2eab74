"""Prune against a real Triton: old folders go while the served version answers every request and nothing
that serves is reloaded; Triton can no longer load them, and its index forgets them at its next start."""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.sample import Variant
from orchestrator.store.modelconfig import to_json, with_specific_versions
from orchestrator.store.repository import PRUNED_DIR, PRUNED_RECORD

from .conftest import MODEL, Stack, Traffic, stub_pids

pytestmark = pytest.mark.triton


def _ok(stack: Stack, *args: str) -> str:
    result = stack.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _index(stack: Stack) -> dict[int, str]:
    return {e.version: e.state.value for e in stack.triton().index() if e.name == MODEL and e.version is not None}


def test_prune_removes_old_versions_while_triton_serves_on(stack: Stack, packages) -> None:
    stack.triton().load(MODEL)  # absorb Triton's one reload after start (see test_promote)
    for _ in range(3):
        _ok(stack, "import", str(packages[Variant.BETTER]))
    for version in (2, 3, 4):
        _ok(stack, "promote", f"v{version}")
    assert stack.store().resident() == (3, 4) and stack.served_by_triton() == 4
    assert stack.triton().wait_unloaded(MODEL, {1, 2}, 15)
    assert set(_index(stack)) == {1, 2, 3, 4}  # v1 and v2 were loaded once: Triton lists them unloaded
    pids = stub_pids(stack.repository, MODEL)

    with Traffic(stack.server.url) as traffic:
        moment = time.monotonic()
        out = _ok(stack, "prune", "--keep", "1")
    assert traffic.failures() == [] and traffic.versions_sent_after(moment) == {4}
    lines = out.splitlines()
    assert lines[0].startswith("classifier: pruned v1 (verified, ") and lines[1].startswith("classifier: pruned v2 (")
    assert "kept v4 (served, resident, held by Triton, newest), v3 (resident, last verified, held by Triton)" in out

    store = stack.store()
    assert store.versions() == [3, 4] and store.pruned_versions() == (1, 2)
    for version in (1, 2):
        evidence = stack.state / MODEL / PRUNED_DIR / str(version)
        removed = {f["path"] for f in json.loads((evidence / PRUNED_RECORD).read_text())["files"]}
        assert removed >= {"meta.yaml", "model.onnx", "model.py"}  # and what Triton wrote there (__pycache__)
    assert stub_pids(stack.repository, MODEL) == pids  # nothing was reloaded

    # Triton's index remembers each version it unloaded ("UNAVAILABLE: unloaded") until it restarts, but the
    # folder is gone: a load naming v2 loads nothing of it, serving untouched, and after a restart the pruned
    # versions are not listed at all.
    _, naming = with_specific_versions(stack.store().config_text(), (2, 3, 4))
    with Traffic(stack.server.url) as traffic:
        stack.triton().load(MODEL, to_json(naming))
    assert traffic.failures() == [] and traffic.versions_sent_after(0) == {4}
    assert _index(stack) == {1: "UNAVAILABLE", 2: "UNAVAILABLE", 3: "READY", 4: "READY"}
    assert stub_pids(stack.repository, MODEL) == pids
    stack.restart()
    assert _index(stack) == {3: "READY", 4: "READY"}

    status = json.loads(_ok(stack, "status", "--json"))[0]
    assert status["served"] == 4 and status["in_sync"] is True
    assert [row["version"] for row in status["versions"]] == [3, 4]
    _ok(stack, "import", str(packages[Variant.BETTER]))
    assert stack.store().versions() == [3, 4, 5]  # numbering goes on past the pruned numbers
