"""Prune on the twin: what goes, what stays as evidence, the journal, numbering, crashes at each fault point,
a full disk, and the watcher's periodic prune under policy.yaml's ``retention``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator import faults
from orchestrator.core.model import Verification, VersionStatus
from orchestrator.daemons.watch import RETENTION_RETRY_S, Watch
from orchestrator.errors import UnknownVersion, UsageError
from orchestrator.store.lock import model_lock
from orchestrator.store.repository import PRUNED_DIR, PRUNED_RECORD
from orchestrator.triton import metrics as triton_metrics
from orchestrator.usecases.prune import PruneResult

from .conftest import CANDIDATE, MODEL, NOWHERE, Env


def _serving_five(env: Env) -> None:
    """v2..v5 filed, v5 promoted: v5 serves with v1 (the seed's verified version) resident as its fallback."""
    assert [env.import_() for _ in range(4)] == [2, 3, 4, 5]
    assert env.orchestrator().promote(MODEL, 5).changed
    assert env.store().resident() == (1, 5)


def _folder(env: Env, version: int) -> Path:
    return env.repository / MODEL / str(version)


def _evidence(env: Env, version: int) -> Path:
    return env.state / MODEL / PRUNED_DIR / str(version)


def _sizes(env: Env, version: int) -> dict[str, tuple[str, int]]:
    """name -> (sha256, bytes) of each file of a version folder."""
    return {str(p.relative_to(_folder(env, version))): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
            for p in sorted(_folder(env, version).rglob("*")) if p.is_file()}


def _prunes(env: Env) -> list[str]:
    return env.outcomes("prune")


def _files(env: Env) -> dict[str, bytes]:
    """Every file, the journal's summary cache aside (a reader may refresh it)."""
    return {name: data for name, data in env.files().items() if not name.endswith(".index.json")}


def test_a_dry_run_says_what_would_go_and_changes_nothing(env: Env) -> None:
    _serving_five(env)
    before = _files(env)
    sizes = {v: sum(b for _, b in _sizes(env, v).values()) for v in (2, 3, 4)}
    result = env.orchestrator().prune(MODEL, keep=1, dry_run=True)
    assert result.dry_run and [(p.version, p.status) for p in result.pruned] == [(2, "unverified"), (3, "unverified"),
                                                                                (4, "unverified")]
    assert {p.version: p.freed_bytes for p in result.pruned} == sizes and result.freed_bytes == sum(sizes.values())
    assert {k.version: k.describe() for k in result.kept} == {5: "served, resident, held by Triton, newest",
                                                              1: "resident, last verified, held by Triton"}
    assert _files(env) == before and _prunes(env) == []


def test_prune_removes_the_folders_keeps_the_evidence_and_reports_what_it_freed(env: Env) -> None:
    _serving_five(env)
    store = env.store()
    store.set_verification(3, Verification(status=VersionStatus.QUARANTINED, verified_by="watch", reason="NaN"))
    attestation = (env.state / MODEL / "attestations" / "3.json").read_bytes()
    files = {v: _sizes(env, v) for v in (2, 3, 4)}
    metas = {v: (_folder(env, v) / "meta.yaml").read_bytes() for v in (2, 3, 4)}

    result = env.orchestrator().prune(MODEL, keep=1)

    assert [(p.version, p.status) for p in result.pruned] == [(2, "unverified"), (3, "quarantined"),
                                                              (4, "unverified")]
    freed = {v: sum(b for _, b in found.values()) for v, found in files.items()}
    assert {p.version: p.freed_bytes for p in result.pruned} == freed and result.freed_bytes == sum(freed.values())
    store = env.store()
    assert store.versions() == [1, 5] and store.pruned_versions() == (2, 3, 4) and store.trash_leftovers() == []
    for version in (2, 3, 4):
        assert (_evidence(env, version) / "meta.yaml").read_bytes() == metas[version]
        record = json.loads((_evidence(env, version) / PRUNED_RECORD).read_text())
        assert {f["path"]: (f["sha256"], f["bytes"]) for f in record["files"]} == files[version]
        assert record["freed_bytes"] == freed[version] and record["version"] == version
    assert store.pruned_record(3)["status"] == "quarantined"  # type: ignore[index]
    assert (env.state / MODEL / "attestations" / "3.json").read_bytes() == attestation
    # Triton serves on, and its repository no longer has the pruned versions.
    env.assert_consistent(5, [1, 5])
    assert {e.version for e in env.twin.index() if e.name == MODEL} <= {1, 5}
    # Journaled: the plan, a step per version, the outcome.
    assert _prunes(env) == ["started", "pruned", "pruned", "pruned", "succeeded"]
    started, done = [r for r in env.records() if r.action == "prune" and r.result in ("started", "succeeded")]
    assert started.details["prunable"] == [2, 3, 4] and started.details["keep"] == 1
    assert done.details == {"pruned": [2, 3, 4], "freed_bytes": result.freed_bytes}
    assert done.actor == "pytest"


def test_a_pruned_version_is_never_served_again_and_its_number_never_filed_again(env: Env) -> None:
    _serving_five(env)
    env.store().set_verification(3, Verification(status=VersionStatus.QUARANTINED, verified_by="watch"))
    env.orchestrator().prune(MODEL, keep=1)
    orch = env.orchestrator()
    with pytest.raises(UnknownVersion, match="has no version v2"):
        orch.rollback(MODEL, to=2, force=True)
    with pytest.raises(UnknownVersion, match="has no version v3"):
        orch.promote(MODEL, 3, force=True)  # quarantined, then pruned: --force cannot bring it back
    assert env.import_() == 6  # the next number, not a pruned one
    assert env.orchestrator().rollback(MODEL).to_version == 1  # the fallback is the resident verified v1
    env.assert_consistent(1, [1, 5, 6])


def test_numbering_goes_past_a_pruned_number_even_when_no_folder_is_left_above_it(env: Env) -> None:
    """Retention always keeps the highest folder; should it go by hand, the evidence still holds its number."""
    evidence = _evidence(env, 9)
    evidence.mkdir(parents=True)
    (evidence / PRUNED_RECORD).write_text("{}")
    assert env.import_() == 10


def test_keep_comes_from_the_policy_and_nothing_to_prune_writes_nothing(env: Env) -> None:
    _serving_five(env)
    env.set_policy("retention", keep=3)
    result = env.orchestrator().prune(MODEL)
    assert result.keep == 3 and [p.version for p in result.pruned] == [2]
    before = _files(env)
    again = env.orchestrator().prune(MODEL)
    assert again.pruned == () and again.freed_bytes == 0
    assert _files(env) == before and _prunes(env) == ["started", "pruned", "succeeded"]


def test_keep_below_one_is_a_usage_error(env: Env) -> None:
    with pytest.raises(UsageError, match="--keep must be at least 1"):
        env.orchestrator().prune(MODEL, keep=0)


def test_an_interrupted_promote_keeps_its_candidate_and_what_triton_holds(env: Env) -> None:
    assert [env.import_() for _ in range(3)] == [2, 3, 4]
    with env.crash_at("promote:candidate_loaded"):
        env.orchestrator().promote(MODEL, 2)
    dry = env.orchestrator().prune(MODEL, keep=1, dry_run=True)  # no repair: the promote is still open
    reasons = {k.version: k.describe() for k in dry.kept}
    assert reasons[2] == "held by Triton, named by an unfinished operation, under test"
    assert [p.version for p in dry.pruned] == [3]
    assert (env.repository / CANDIDATE).exists()


def test_without_triton_the_disk_decides(env: Env) -> None:
    _serving_five(env)
    env.twin.stop()
    result = env.orchestrator().prune(MODEL, keep=1)
    assert not result.triton_asked and [p.version for p in result.pruned] == [2, 3, 4]
    assert env.store().versions() == [1, 5]


@pytest.mark.parametrize(("point", "pruned"), [
    ("prune:started", ()),  # nothing touched yet
    ("prune:evidence", ()),  # v2's evidence written, its folder still in place: v2 is kept
    ("prune:renamed", (2,)),  # v2's folder out of Triton's sight, not deleted: the repair deletes it
    ("prune:pruned", (2,)),  # v2 gone and journaled; v3 and v4 not begun
])
def test_a_prune_killed_at_each_step_leaves_each_version_intact_or_fully_pruned(env: Env, point: str,
                                                                              pruned: tuple[int, ...]) -> None:
    _serving_five(env)
    metas = {v: (_folder(env, v) / "meta.yaml").read_bytes() for v in (2, 3, 4)}
    with env.crash_at(point):
        env.orchestrator().prune(MODEL, keep=1)
    assert bool(env.store().trash_leftovers()) == (point == "prune:renamed")

    notes = env.orchestrator().reconcile()
    assert any("prune" in note for note in notes)
    store = env.store()
    assert store.trash_leftovers() == [] and store.pruned_versions() == pruned
    for version in (2, 3, 4):
        if version in pruned:
            assert not _folder(env, version).exists()
            assert (_evidence(env, version) / "meta.yaml").read_bytes() == metas[version]
            assert (_evidence(env, version) / PRUNED_RECORD).is_file()
        else:
            assert (_folder(env, version) / "meta.yaml").read_bytes() == metas[version]
            assert not _evidence(env, version).exists()
    env.assert_consistent(5, sorted({1, 2, 3, 4, 5} - set(pruned)))
    assert env.last("prune").result == "aborted"

    env.orchestrator().prune(MODEL, keep=1)  # the next prune finishes the job
    assert env.store().versions() == [1, 5] and env.store().pruned_versions() == (2, 3, 4)


@pytest.mark.parametrize("full", [PRUNED_RECORD, "meta.yaml", "version_history.log"])
def test_a_full_disk_leaves_the_version_intact(env: Env, full: str) -> None:
    _serving_five(env)
    before = {v: _sizes(env, v) for v in (2, 3, 4)}
    env.monkeypatch.setenv(faults.ENV_WRITE, full)
    with pytest.raises(OSError, match="No space left"):
        env.orchestrator().prune(MODEL, keep=1)
    env.monkeypatch.delenv(faults.ENV_WRITE)
    assert {v: _sizes(env, v) for v in (2, 3, 4)} == before
    assert not (env.state / MODEL / PRUNED_DIR / "2").exists() and env.store().trash_leftovers() == []
    if full == "version_history.log":
        assert _prunes(env) == []  # not even started: nothing is removed that the journal cannot record
    else:
        assert _prunes(env) == ["started", "failed"]
        assert env.last("prune").details == {"pruned": [], "freed_bytes": 0}
    env.assert_consistent(5, [1, 2, 3, 4, 5])


# --- the watcher ------------------------------------------------------------------------

def _daemon(env: Env) -> tuple[Watch, CollectorRegistry]:
    env.monkeypatch.setattr(triton_metrics, "scrape", lambda url, timeout_s: None)  # no /metrics, no socket
    env.set_policy("watch", grace_s=0)
    registry = CollectorRegistry()
    return Watch(env.settings(), None, NOWHERE, registry=registry, triton=env.twin, clock=env.clock,
                 take_commands=False), registry


def _tick(env: Env, watch: Watch, seconds: float = 0.0) -> None:
    env.clock.sleep(seconds)
    watch.tick()


def test_the_watcher_prunes_when_retention_is_enabled_at_most_every_every_s(env: Env) -> None:
    _serving_five(env)
    env.set_policy("retention", enabled=True, keep=2, every_s=600)
    watch, registry = _daemon(env)
    _tick(env, watch)
    assert env.store().versions() == [1, 4, 5] and env.last("prune").actor == "watch"
    assert env.import_() == 6
    _tick(env, watch, 599)
    assert env.store().versions() == [1, 4, 5, 6]  # not due yet
    _tick(env, watch, 2)
    assert env.store().versions() == [1, 5, 6]
    assert registry.get_sample_value("orchestrator_watch_errors_total",
                                     {"model": MODEL, "where": "retention", "kind": "disk"}) is None


def test_the_watcher_leaves_files_alone_while_retention_is_off(env: Env) -> None:
    _serving_five(env)
    watch, _ = _daemon(env)
    for _ in range(3):
        _tick(env, watch, 3600)
    assert env.store().versions() == [1, 2, 3, 4, 5] and _prunes(env) == []
    env.set_policy("retention", enabled=True, keep=1)
    _tick(env, watch, RETENTION_RETRY_S)  # switched on: noticed within a minute
    assert env.store().versions() == [1, 5]


def test_the_watcher_waits_for_a_command_holding_the_model_and_counts_errors(env: Env) -> None:
    _serving_five(env)
    env.set_policy("retention", enabled=True, keep=1, every_s=3600)
    watch, registry = _daemon(env)
    with model_lock(env.store().state, MODEL, timeout_s=1):  # an operator's command
        _tick(env, watch)
    assert env.store().versions() == [1, 2, 3, 4, 5]
    assert registry.get_sample_value("orchestrator_watch_errors_total",
                                     {"model": MODEL, "where": "retention", "kind": "orchestrator"}) is None
    env.monkeypatch.setenv(faults.ENV_WRITE, PRUNED_RECORD)
    _tick(env, watch, RETENTION_RETRY_S)  # tried again a minute later: the disk refuses
    errors = {"model": MODEL, "where": "retention", "kind": "disk"}
    assert registry.get_sample_value("orchestrator_watch_errors_total", errors) == 1
    _tick(env, watch, 10)
    assert registry.get_sample_value("orchestrator_watch_errors_total", errors) == 1  # not every tick
    env.monkeypatch.delenv(faults.ENV_WRITE)
    _tick(env, watch, 3600)
    assert env.store().versions() == [1, 5]


def test_prune_result_as_json_names_every_field(env: Env) -> None:
    _serving_five(env)
    result = env.orchestrator().prune(MODEL, keep=1, dry_run=True)
    assert isinstance(result, PruneResult)
    doc = result.as_dict()
    assert set(doc) == {"model", "dry_run", "keep", "pruned", "freed_bytes", "kept", "triton_asked"}
    assert doc["pruned"][0] == {"version": 2, "status": "unverified", "freed_bytes": result.pruned[0].freed_bytes}
    assert doc["kept"][0] == {"version": 5, "reasons": ["served", "resident", "held by Triton", "newest"]}
