"""Crash recovery on the twin: a command dies at each fault point (in-process, see ``Env.crash_at``), and the
next command completes or undoes it as core/repair.py documents (mirrors tests/integration/test_crash.py)."""

from __future__ import annotations

import pytest

from orchestrator.errors import TritonUnreachable
from orchestrator.store import repository as repository_module
from orchestrator.store.metafile import VersionMeta
from orchestrator.triton.protocol import TritonState

from .conftest import CANDIDATE, MODEL, Env


@pytest.mark.parametrize(("point", "left", "served", "outcome"), [
    # what the twin holds at the crash, the version served after the repair, the promote's final record
    ("promote:candidate_entry", {1: "READY"}, 1, "aborted"),
    ("promote:candidate_loaded", {1: "READY"}, 1, "aborted"),
    ("promote:verified", {1: "READY"}, 1, "aborted"),
    ("promote:policy_written", {1: "READY"}, 2, "repaired"),
    ("promote:loaded", {1: "READY", 2: "READY"}, 2, "repaired"),
])
def test_promote_killed_at_each_step_is_repaired(env: Env, point: str, left: dict[int, str], served: int,
                                                 outcome: str) -> None:
    env.import_()
    with env.crash_at(point):
        env.orchestrator().promote(MODEL, 2)
    assert env.states() == left
    assert (env.repository / CANDIDATE).exists() == (point in ("promote:candidate_entry", "promote:candidate_loaded"))
    assert (env.states(CANDIDATE) == {2: "READY"}) == (point == "promote:candidate_loaded")
    interrupted = env.orchestrator().status(MODEL)[0].interrupted
    assert interrupted is not None and interrupted.startswith("promote to v2 (op ")

    notes = env.orchestrator().reconcile()
    assert notes
    env.assert_consistent(served, [1, 2])
    finals = [r for r in env.records() if r.action == "promote" and r.result not in ("started", "step")]
    assert [r.result for r in finals] == [outcome]
    assert (finals[0].from_version, finals[0].to_version) == (1, 2)
    if served == 2:
        assert env.store().resident() == (1, 2) and env.status(2) == "verified"
        assert finals[0].details["resident"] == [1, 2]
    else:  # the next promote goes through
        assert env.store().resident() == (1,)
        assert env.orchestrator().promote(MODEL, 2).changed
        env.assert_consistent(2, [1, 2])


def test_a_promote_completed_by_the_repair_loads_what_the_disk_says(env: Env) -> None:
    env.import_()
    with env.crash_at("promote:policy_written"):
        env.orchestrator().promote(MODEL, 2)
    assert env.orchestrator().status(MODEL)[0].in_sync is False  # disk (1, 2), Triton (1)
    env.orchestrator().reconcile()
    reconciled = env.last()
    assert (reconciled.action, reconciled.result, reconciled.from_version, reconciled.to_version) == \
        ("reconcile", "succeeded", 1, 2)
    assert reconciled.reason == "Triton held [1], disk says [1, 2]"
    assert env.orchestrator().status(MODEL)[0].in_sync is True


@pytest.mark.parametrize(("point", "versions", "outcome"), [
    ("import:staged", [1], "aborted"),
    ("import:filed", [1, 2], "repaired"),
])
def test_import_killed_at_each_step_is_repaired(env: Env, point: str, versions: list[int], outcome: str) -> None:
    with env.crash_at(point):
        env.import_()
    assert len(env.store().staging_leftovers()) == (point == "import:staged")
    notes = env.orchestrator().reconcile()
    assert any("staging" in note for note in notes) == (point == "import:staged")
    env.assert_consistent(1, versions)
    last = env.last()
    assert (last.action, last.result, last.to_version) == ("import", outcome, 2)
    if versions == [1, 2]:
        assert env.status(2) == "unverified"
    assert env.import_() == versions[-1] + 1  # numbering goes on from what was filed


@pytest.mark.parametrize(("point", "left"), [
    ("rollback:policy_written", {1: "READY", 2: "READY"}),
    ("rollback:loaded", {1: "READY", 2: "UNAVAILABLE"}),
])
def test_rollback_killed_after_the_switch_is_completed_by_running_it_again(env: Env, point: str,
                                                                           left: dict[int, str]) -> None:
    env.promote_better()
    with env.crash_at(point):
        env.orchestrator().rollback(MODEL, reason="operator saw false alarms")
    assert env.states() == left and env.store().resident() == (1,)
    assert env.status(2) == "verified"  # not marked yet
    result = env.orchestrator().rollback(MODEL)  # the operator simply runs it again
    assert (result.from_version, result.to_version, result.changed) == (2, 1, True)
    env.assert_consistent(1, [1, 2])
    assert env.status(2) == "rolled_back"
    assert env.store().attestation(2).verification.reason == "operator saw false alarms"  # the interrupted one's reason
    assert [r.result for r in env.records() if r.action == "rollback"] == ["started", "repaired"]


def test_a_quarantining_rollback_killed_after_the_switch_still_quarantines(env: Env) -> None:
    env.promote_better()
    with env.crash_at("rollback:loaded"):
        env.orchestrator().rollback(MODEL, reason="watch: output_sanity", quarantine=True)
    env.orchestrator().reconcile()
    env.assert_consistent(1, [1, 2])
    assert env.status(2) == "quarantined"


def test_the_disk_is_repaired_while_triton_is_down_and_loaded_when_it_returns(env: Env) -> None:
    env.import_()
    with env.crash_at("promote:policy_written"):
        env.orchestrator().promote(MODEL, 2)
    env.twin.stop()
    with pytest.raises(TritonUnreachable):
        env.orchestrator().reconcile()
    assert env.outcomes("promote")[-1] == "repaired"  # disk first
    assert env.store().resident() == (1, 2)
    env.twin.start()  # --load-model classifier: the on-disk policy
    env.assert_consistent(2, [1, 2])
    assert env.orchestrator().reconcile() == []


def test_a_leftover_candidate_entry_without_an_open_operation_is_removed(env: Env) -> None:
    env.import_()
    store = env.store()
    store.write_candidate_entry(store.snapshot(), 2)
    env.twin.load(CANDIDATE)
    assert env.states(CANDIDATE) == {2: "READY"}
    notes = env.orchestrator().reconcile()
    assert notes == ["removed a leftover candidate entry"]
    env.assert_consistent(1, [1, 2])


@pytest.mark.parametrize("point", ["rollback:policy_written", "rollback:loaded"])
def test_repairing_a_rollback_never_writes_meta_under_a_version_triton_holds(
        env: Env, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    env.twin = env.make_twin(unload_latency_s=1.0)  # a python stub takes about a second to unload
    env.promote_better()
    with env.crash_at(point):
        env.orchestrator().rollback(MODEL)
    held: list[tuple[int, TritonState]] = []
    write_meta = repository_module.write_meta

    def watched(path: object, meta: VersionMeta) -> None:
        entry = env.twin.states(MODEL).get(meta.version or 0)
        if entry is not None and entry.state.holds_files:
            held.append((meta.version or 0, entry.state))
        write_meta(path, meta)

    monkeypatch.setattr(repository_module, "write_meta", watched)
    env.orchestrator().rollback(MODEL)
    assert env.status(2) == "rolled_back"
    assert held == []
