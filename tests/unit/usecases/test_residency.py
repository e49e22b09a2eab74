"""The residency guard on the twin: a config.pbtxt edited by hand to load an unverified version is rewritten
(or refused) by the next command or watcher tick, before anything loads it or a switch starts from it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from orchestrator.core.journal import Record
from orchestrator.errors import LoadFailed, UnverifiedResident
from orchestrator.sample import Variant
from orchestrator.store.lock import model_lock
from orchestrator.store.metafile import Verification, VersionStatus

from .conftest import ADMIN_KEY, MODEL, ROOT, Env


def edit_policy(env: Env, policy: str) -> None:
    """What an operator's editor does: the version_policy line replaced (or removed, with ``policy`` empty)."""
    config = env.repository / MODEL / "config.pbtxt"
    lines = [line for line in config.read_text().splitlines(keepends=True) if not line.startswith("version_policy")]
    config.write_text("".join(lines) + (policy + "\n" if policy else ""))


def specific(*versions: int) -> str:
    return f"version_policy: {{ specific: {{ versions: [{', '.join(map(str, versions))}] }} }}"


def restart_triton(env: Env) -> None:
    """Triton restarted with --load-model: it loads the disk's config before the orchestrator can act."""
    env.twin.stop()
    env.twin.start()


def guard_records(env: Env) -> list[Record]:
    return [r for r in env.records() if r.action == "reconcile" and r.result in ("repaired", "refused")]


def loads_of(env: Env, version: int) -> int:
    return env.backends.loads.count((MODEL, version))


def test_reconcile_rewrites_a_hand_edit_that_a_restart_loaded_and_unloads_the_unverified_version(env: Env) -> None:
    env.promote_better()  # v2 serves, v1 its fallback: the journal says v2 serves
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    restart_triton(env)
    assert env.served_by_twin() == 3  # the gap: Triton loaded the hand edit by itself

    notes = env.orchestrator().reconcile()
    assert env.store().resident() == (1, 2) and env.ready() == {1, 2} and env.served_by_twin() == 2
    assert "config.pbtxt listed unverified v3 (hand-edited?); rewritten to v1, v2" in notes
    [guarded] = guard_records(env)
    assert (guarded.result, guarded.to_version) == ("repaired", 2)
    assert guarded.details == {"dropped": [{"version": 3, "status": "unverified"}], "resident_before": [1, 2, 3],
                               "resident": [1, 2], "restored": None}
    synced = env.last()
    assert (synced.action, synced.result, synced.reason) == ("reconcile", "succeeded",
                                                           "Triton held [1, 2, 3], disk says [1, 2]")
    assert env.store().versions() == [1, 2, 3] and env.status(3) == "unverified"  # nothing lost
    env.assert_consistent(2, [1, 2, 3])
    assert env.orchestrator().reconcile() == []  # rewritten once


def test_the_rewrite_is_logged_as_a_warning(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.import_()
    edit_policy(env, specific(1, 2))
    with caplog.at_level(logging.WARNING, logger="orchestrator.usecases.repair"):
        env.orchestrator().reconcile()
    assert f"{MODEL}: config.pbtxt listed unverified v2 (hand-edited?); rewritten to v1" in caplog.messages


def test_the_seed_model_never_adopts_a_version_the_orchestrator_filed_unverified(env: Env) -> None:
    """An empty journal adopts what the config serves (the seed's v1), but not an imported, unpromoted v2."""
    assert env.store().journal.summary().served == ()
    env.import_()
    edit_policy(env, specific(1, 2))
    env.orchestrator().reconcile()
    assert env.store().resident() == (1,) and env.served_by_twin() == 1
    assert env.store().journal.summary().served == (1,)  # the guard's record: v1 serves; bootstrap over
    assert loads_of(env, 2) == 0


def test_a_seed_version_that_was_never_verified_keeps_serving(env: Env) -> None:
    env.store().set_verification(1, Verification())  # the seed with no verification at all
    before = env.files()
    assert env.orchestrator().reconcile() == []
    assert env.files() == before and env.served_by_twin() == 1
    assert env.import_() == 2 and env.store().resident() == (1,)


def test_a_config_listing_only_verified_versions_is_left_alone(env: Env) -> None:
    env.promote_better()
    before = env.files()
    assert env.orchestrator().reconcile() == []
    assert env.files() == before


def test_import_after_the_version_policy_was_removed_never_makes_the_new_or_an_older_unverified_folder_resident(
        env: Env) -> None:
    assert env.import_() == 2
    edit_policy(env, "")  # Triton's default: the newest folder, the unverified v2
    assert env.store().resident() == (2,)
    assert env.import_() == 3
    store = env.store()
    assert store.resident() == (1,) and "specific: { versions: [1] }" in (env.repository / MODEL / "config.pbtxt"
                                                                            ).read_text()
    [guarded] = guard_records(env)
    assert guarded.reason == ("config.pbtxt had no version_policy, so Triton took the newest folder, unverified v2 "
                              "(hand-edited?); rewritten to v1")
    # The guard pinned the policy: import's own pinning had nothing left to do.
    assert [r for r in env.records() if r.details.get("step") == "version_policy_pinned"] == []
    restart_triton(env)
    assert env.ready() == {1} and env.served_by_twin() == 1
    assert loads_of(env, 2) == loads_of(env, 3) == 0


def test_promote_after_a_hand_edit_listing_an_unverified_version_never_carries_it(env: Env) -> None:
    assert env.import_() == 2
    assert env.import_() == 3
    edit_policy(env, specific(1, 3))
    restart_triton(env)
    assert env.served_by_twin() == 3
    result = env.orchestrator().promote(MODEL, 2)
    assert (result.from_version, result.to_version, result.resident) == (1, 2, (1, 2))
    started = next(r for r in env.records() if r.action == "promote" and r.result == "started")
    assert (started.from_version, started.details["resident_before"]) == (1, [1])  # planned from the guarded set
    assert [r.details["resident"] for r in guard_records(env)] == [[1]]
    env.assert_consistent(2, [1, 2, 3])
    assert loads_of(env, 3) == 1  # only the restart's; nothing of ours loaded it


def test_rollback_after_a_hand_edit_listing_an_unverified_version_never_carries_it(env: Env) -> None:
    env.promote_better()
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    result = env.orchestrator().rollback(MODEL, to=1)
    assert (result.from_version, result.to_version, result.resident) == (2, 1, (1,))
    started = next(r for r in env.records() if r.action == "rollback" and r.result == "started")
    assert started.details["resident_before"] == [1, 2]
    env.assert_consistent(1, [1, 2, 3])
    assert loads_of(env, 3) == 0


def test_a_plain_rollback_after_a_hand_edit_that_served_an_unverified_version_stops_at_the_guard(env: Env) -> None:
    env.promote_better()  # v2 serves, v1 its fallback
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    restart_triton(env)
    assert env.served_by_twin() == 3
    result = env.orchestrator().rollback(MODEL)  # "get v3 off serving"
    assert (result.from_version, result.to_version, result.changed) == (3, 2, True)
    assert env.served_by_twin() == 2 and env.status(2) == "verified"  # v2 was not rolled back as well
    assert env.outcomes("rollback") == []  # the guard's rewrite is the journal's record of it
    env.assert_consistent(2, [1, 2, 3])


def test_a_rollback_forced_to_an_unverified_version_stays_and_is_not_undone(env: Env) -> None:
    env.promote_better()
    assert env.import_() == 3
    result = env.orchestrator().rollback(MODEL, to=3, force=True)
    assert result.to_version == 3 and env.store().resident() == (1, 3)
    assert env.orchestrator().reconcile() == [] and guard_records(env) == []
    env.assert_consistent(3, [1, 2, 3])


def test_an_interrupted_rollback_forced_to_an_unverified_version_is_completed_not_undone(env: Env) -> None:
    env.promote_better()
    assert env.import_() == 3
    with env.crash_at("rollback:policy_written"):
        env.orchestrator().rollback(MODEL, to=3, force=True)
    assert env.store().resident() == (1, 2, 3)  # v3 written beside what served: the switch itself
    env.orchestrator().reconcile()
    assert env.store().resident() == (1, 3) and env.served_by_twin() == 3
    final = [r for r in env.records() if r.action == "rollback" and r.result not in ("started", "step")]
    assert [(r.result, r.to_version) for r in final] == [("repaired", 3)]
    assert guard_records(env) == []  # journal-served once the repair's record landed: kept
    assert env.status(2) == "rolled_back"
    env.assert_consistent(3, [1, 2, 3])


def test_an_interrupted_promote_is_undone_before_the_guard_looks(env: Env) -> None:
    env.import_()
    with env.crash_at("promote:candidate_loaded"):
        env.orchestrator().promote(MODEL, 2)
    edit_policy(env, specific(1, 2))  # and someone lists the candidate by hand meanwhile
    env.orchestrator().reconcile()
    assert env.store().resident() == (1,) and env.status(2) == "unverified"
    env.assert_consistent(1, [1, 2])


def _no_version_can_serve(env: Env) -> None:
    """v1 failed a check (by hand here), v2 imported and never promoted, and the config lists only v2."""
    env.import_()
    env.store().set_verification(1, Verification(status=VersionStatus.FAILED, reason="test"))
    edit_policy(env, specific(2))


def test_reconcile_refuses_when_no_version_may_serve_and_changes_nothing(env: Env) -> None:
    _no_version_can_serve(env)
    restart_triton(env)
    assert env.ready() == {2}
    config = env.repository / MODEL / "config.pbtxt"
    text, records = config.read_text(), env.records()
    with pytest.raises(UnverifiedResident) as refused:
        env.orchestrator().reconcile()
    assert refused.value.exit_code == 4
    assert str(refused.value).startswith(f"{config} makes Triton load unverified v2; no verified version is on disk")
    assert config.read_text() == text and env.store().versions() == [1, 2]
    assert env.records()[: len(records)] == records  # the journal kept, one refusal added
    [refusal] = guard_records(env)
    assert (refusal.result, refusal.reason) == ("refused", str(refused.value))
    assert env.ready() == {2}  # Triton keeps what it holds: nothing was loaded or unloaded


@pytest.mark.parametrize("command", ["promote", "rollback", "import"])
def test_every_command_refuses_the_same_way(env: Env, command: str) -> None:
    _no_version_can_serve(env)
    orch = env.orchestrator()
    run = {"promote": lambda: orch.promote(MODEL, 2), "rollback": lambda: orch.rollback(MODEL, to=1, force=True),
           "import": lambda: orch.import_package(env.packages[Variant.BETTER])}[command]
    with pytest.raises(UnverifiedResident, match="makes Triton load unverified v2"):
        run()
    assert env.store().versions() == [1, 2] and env.store().resident() == (2,)


def test_orchestrate_reconcile_refuses_in_one_line_with_exit_4(env: Env) -> None:
    _no_version_can_serve(env)
    before = env.files()
    journal = env.store().journal.read().records
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(ORCH_REPOSITORY=str(env.repository), ORCH_STATE_DIR=str(env.state), ORCH_ACTOR="pytest",
                   ORCH_TRITON_URL="http://127.0.0.1:9", ORCH_ADMIN_KEY=ADMIN_KEY)  # refused before Triton is asked
    result = subprocess.run([sys.executable, "-m", "orchestrator", "reconcile"], env=environ, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unverified v2" in lines[0]
    assert str(env.repository / MODEL / "config.pbtxt") in lines[0] and "restore its version_policy" in lines[0]
    assert result.stdout == ""
    after = env.files()
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert all(name.endswith(".log") or "journal" in name for name in changed), changed  # only the journal grew
    assert env.store().journal.read().records[: len(journal)] == journal


def test_the_watcher_rewrites_a_hand_edit_a_restart_loaded_before_it_judges(env: Env) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    assert env.ticks(watcher, 2) == [[], []]
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    restart_triton(env)
    assert env.served_by_twin() == 3
    env.ticks(watcher, 1)
    assert env.store().resident() == (1, 2) and env.ready() == {1, 2} and env.served_by_twin() == 2
    assert registry.get_sample_value("orchestrator_served_version", {"model": MODEL}) == 2
    [guarded] = guard_records(env)
    assert (guarded.actor, guarded.details["dropped"]) == ("watch", [{"version": 3, "status": "unverified"}])
    assert env.ticks(watcher, 3) == [[], [], []] and len(guard_records(env)) == 1


def test_the_watcher_takes_no_lock_while_nothing_needs_dropping(env: Env) -> None:
    env.promote_better()
    watcher, _ = env.watcher(lock_timeout_s=0.05)
    with model_lock(env.store().state, MODEL, timeout_s=1):  # an operator's command holds the model
        assert env.ticks(watcher, 2) == [[], []]
    assert watcher.guarded == (1, 2)


def test_a_busy_model_makes_the_watcher_guard_on_the_next_tick(env: Env) -> None:
    env.promote_better()
    watcher, _ = env.watcher(lock_timeout_s=0.05)
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    with model_lock(env.store().state, MODEL, timeout_s=1):
        env.ticks(watcher, 1)
    assert env.store().resident() == (1, 2, 3) and guard_records(env) == []
    env.ticks(watcher, 1)
    assert env.store().resident() == (1, 2) and len(guard_records(env)) == 1


def test_the_watcher_reports_a_refusal_once_and_changes_nothing(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    watcher, _ = env.watcher()
    env.ticks(watcher, 1)
    _no_version_can_serve(env)
    text = (env.repository / MODEL / "config.pbtxt").read_text()
    with caplog.at_level(logging.ERROR, logger="orchestrator.daemons.watcher"):
        env.ticks(watcher, 3)
    assert [m for m in caplog.messages if "makes Triton load unverified v2" in m] != []
    assert len([m for m in caplog.messages if "makes Triton load" in m]) == 1
    assert [r.result for r in guard_records(env)] == ["refused"]
    assert (env.repository / MODEL / "config.pbtxt").read_text() == text


def test_a_full_disk_stops_the_rewrite_and_the_command_and_the_next_command_rewrites(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.import_()
    edit_policy(env, specific(1, 2))
    config = env.repository / MODEL / "config.pbtxt"
    text = config.read_text()
    monkeypatch.setenv("ORCH_FAIL_WRITE", "classifier/config.pbtxt")
    with pytest.raises(OSError, match="No space left on device"):
        env.orchestrator().reconcile()
    assert config.read_text() == text and guard_records(env) == []  # nothing half-written, nothing claimed
    monkeypatch.delenv("ORCH_FAIL_WRITE")
    env.orchestrator().reconcile()
    assert env.store().resident() == (1,) and len(guard_records(env)) == 1


def test_triton_refusing_the_rewritten_set_fails_the_command_and_the_next_one_loads_it(env: Env) -> None:
    env.import_()
    edit_policy(env, specific(2))
    restart_triton(env)
    assert env.ready() == {2}
    env.twin.configure(MODEL, 1, load_error="model.onnx: device lost")
    with pytest.raises(LoadFailed, match="device lost"):
        env.orchestrator().reconcile()
    assert env.store().resident() == (1,)  # the disk is safe: a restart now loads v1, never v2
    assert env.last().result == "failed"
    env.twin.configure(MODEL, 1, load_error=None)
    env.orchestrator().reconcile()
    env.assert_consistent(1, [1, 2])


def test_a_full_disk_under_the_watcher_is_said_once_judging_goes_on_and_the_rewrite_is_retried(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    env.promote_better()
    watcher, registry = env.watcher()
    env.ticks(watcher, 1)
    assert env.import_() == 3
    edit_policy(env, specific(1, 2, 3))
    monkeypatch.setenv("ORCH_FAIL_WRITE", "classifier/config.pbtxt")
    checks = registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) or 0
    with caplog.at_level(logging.ERROR, logger="orchestrator.daemons.watcher"):
        env.ticks(watcher, 3)
    assert len([m for m in caplog.messages if "could not rewrite config.pbtxt" in m]) == 1
    assert registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) == checks + 3
    assert env.store().resident() == (1, 2, 3) and env.served_by_twin() == 2  # Triton was never told v3
    monkeypatch.delenv("ORCH_FAIL_WRITE")
    env.ticks(watcher, 1)
    assert env.store().resident() == (1, 2) and len(guard_records(env)) == 1
