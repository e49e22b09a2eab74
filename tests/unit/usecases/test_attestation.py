"""Attestations: verification and shadow results live in the state folder, never in the version folder,
so promote and rollback never wait for Triton to let go of a version's files."""

from __future__ import annotations

import json
import shutil

from orchestrator.core.model import Verification, VersionStatus
from orchestrator.store.attestation import attestation_path

from .conftest import CANDIDATE, MODEL, Env


def test_the_sample_repositorys_verification_in_meta_yaml_is_read_and_carried_over_on_first_write(env: Env) -> None:
    """A repository from before attestations: v1's meta.yaml says verified; nothing else does."""
    assert not attestation_path(env.state / MODEL, 1).exists()
    assert env.status(1) == "verified"
    meta_before = (env.repository / MODEL / "1" / "meta.yaml").read_bytes()
    env.promote_better()
    env.orchestrator().rollback(MODEL)  # v2 rolled back: its attestation written; then v1 ...
    env.orchestrator().rollback(MODEL, to=2, force=True)  # ... rolled back from: v1's first write
    attested = env.store().attestation(1)
    assert attested.status is VersionStatus.ROLLED_BACK
    legacy = env.store().meta(1).verification
    assert attested.verification.golden == legacy.golden  # carried over from meta.yaml
    assert (env.repository / MODEL / "1" / "meta.yaml").read_bytes() == meta_before  # never rewritten


def test_promote_writes_no_file_under_the_version_folder(env: Env) -> None:
    env.import_()
    folder = env.repository / MODEL / "2"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "verification" not in (folder / "meta.yaml").read_text()  # filed as identity only
    env.orchestrator().promote(MODEL, 2)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    saved = json.loads(attestation_path(env.state / MODEL, 2).read_text())
    assert saved["verification"]["status"] == "verified" and saved["filed_at"] == env.store().meta(2).filed_at


def test_promote_does_not_wait_for_the_candidate_to_unload(env: Env) -> None:
    """The floor: candidate load, warm-up, golden checks, one load into the served model."""
    env.twin.configure(CANDIDATE, 2, unload_latency_s=30.0)  # a slow engine teardown
    env.import_()
    started = env.clock()
    env.orchestrator().promote(MODEL, 2)
    assert env.clock() - started < 1.0  # virtual seconds: nothing slept through the 30 s unload
    assert env.twin.states(CANDIDATE)[2].state.value == "UNLOADING"
    assert not (env.repository / CANDIDATE).exists()
    assert env.served_by_twin() == 2


def test_the_next_candidate_waits_for_the_previous_one_to_be_gone(env: Env) -> None:
    env.twin.configure(CANDIDATE, 2, unload_latency_s=5.0)
    env.import_()
    env.orchestrator().promote(MODEL, 2)
    env.import_()  # v3
    started = env.clock()
    env.orchestrator().promote(MODEL, 3)
    assert env.clock() - started >= 4.9  # the entry is rebuilt only once Triton let go of the old one
    assert env.served_by_twin() == 3


def test_rollback_returns_when_traffic_moved_not_when_the_dropped_version_unloaded(env: Env) -> None:
    env.promote_better()
    env.twin.configure(MODEL, 2, unload_latency_s=60.0)  # a crashed stub never finishes on 2.51
    started = env.clock()
    result = env.orchestrator().rollback(MODEL, reason="operator saw false alarms")
    assert env.clock() - started < 1.0
    assert result.to_version == 1 and env.served_by_twin() == 1
    assert env.states() == {1: "READY", 2: "UNLOADING"}
    assert env.status(2) == "rolled_back"  # marked at once: the attestation is not in v2's folder


def test_a_version_filed_again_under_an_old_number_starts_unverified(env: Env) -> None:
    """A stale attestation (its folder removed by hand, the number filed again) does not vouch for it."""
    env.promote_better()
    env.orchestrator().rollback(MODEL)
    assert env.status(2) == "rolled_back"
    shutil.rmtree(env.repository / MODEL / "2")
    assert env.import_() == 2
    assert env.status(2) == "unverified"


def test_an_unreadable_attestation_is_never_a_rollback_target(env: Env) -> None:
    env.promote_better()
    attestation_path(env.state / MODEL, 1).parent.mkdir(parents=True, exist_ok=True)
    attestation_path(env.state / MODEL, 1).write_text("{not json")
    assert env.status(1) == "failed"
    status = env.orchestrator().status(MODEL)[0]
    assert status.fallback is None
    row = next(r for r in status.versions if r.version == 1)
    assert row.status == "corrupt" and "attestations/1.json" in row.reason


def test_set_verification_keeps_the_shadow_result(env: Env) -> None:
    env.import_()
    store = env.store()
    store.record_shadow(store.snapshot(), 2, {"outcome": "passed", "report": {}})
    store.set_verification(2, Verification(status=VersionStatus.QUARANTINED, reason="NaN in production"))
    attested = store.attestation(2)
    assert attested.shadow == {"outcome": "passed", "report": {}} and attested.status is VersionStatus.QUARANTINED
