"""Promote on the twin: a good version is verified beside production and serves; anything else is refused
with serving untouched (mirrors tests/integration/test_promote.py and test_faults.py, without a server)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import CandidateRejected, PolicyViolation, TritonForbidden, TritonUnreachable
from orchestrator.sample import INPUT, OUTPUT, Variant
from orchestrator.store.metafile import Verification, VersionStatus

from .conftest import CANDIDATE, LABELS, MODEL, Env


def test_better_version_is_verified_then_serves_with_the_old_one_resident(env: Env) -> None:
    env.import_()
    result = env.orchestrator().promote(MODEL, 2)
    assert (result.from_version, result.to_version, result.resident, result.changed) == (1, 2, (1, 2), True)
    assert env.served_by_twin() == 2
    assert env.store().resident() == (1, 2)
    assert env.states() == {1: "READY", 2: "READY"}
    assert env.backends.loads == [(MODEL, 1), (CANDIDATE, 2), (MODEL, 2)]  # v1 never reloaded
    attested = env.store().attestation(2)
    assert attested.verification.status is VersionStatus.VERIFIED and attested.verification.verified_by == "pytest"
    assert attested.verification.golden == {"accuracy": 0.97, "served_accuracy": 0.65}
    assert result.metrics == attested.verification.golden
    assert env.outcomes("promote") == ["started", "candidate_loaded", "verified", "switched", "succeeded"]
    last = env.last()
    assert (last.action, last.result, last.from_version, last.to_version, last.actor) == \
        ("promote", "succeeded", 1, 2, "pytest")
    assert last.details["resident"] == [1, 2] and last.duration_ms is not None
    assert not (env.repository / CANDIDATE).exists() and env.states(CANDIDATE) == {}


@pytest.mark.parametrize(("variant", "reason"), [
    (Variant.NAN, "bad outputs on the golden set: LOGITS has 1000 NaN of 1000"),
    (Variant.ZEROS, "LOGITS is all zeros"),
    (Variant.EXPLODING, "LOGITS explodes"),
    (Variant.WORSE, "golden accuracy 0.000 is worse than the served version's 0.650"),
    (Variant.CORRUPT, "load failed"),
])
def test_bad_candidate_is_refused_and_v1_keeps_serving(env: Env, variant: Variant, reason: str) -> None:
    env.import_(variant)
    config = (env.repository / MODEL / "config.pbtxt").read_bytes()
    with pytest.raises(CandidateRejected, match="classifier v2 not promoted") as refused:
        env.orchestrator().promote(MODEL, 2)
    assert reason in refused.value.reason and refused.value.exit_code == 5
    assert env.served_by_twin() == 1 and env.states() == {1: "READY"}
    assert (env.repository / MODEL / "config.pbtxt").read_bytes() == config
    assert env.backends.loads[0] == (MODEL, 1) and (MODEL, 2) not in env.backends.loads
    assert env.status(2) == "failed" and reason in (env.store().attestation(2).verification.reason or "")
    last = env.last()
    assert (last.action, last.result, last.from_version, last.to_version) == ("promote", "failed", 1, 2)
    assert reason in last.reason
    assert env.store().versions() == [1, 2]  # kept, marked failed
    assert not (env.repository / CANDIDATE).exists() and env.states(CANDIDATE) == {}


def test_candidate_the_twin_cannot_load_is_refused(env: Env) -> None:
    env.import_()
    env.twin.configure(CANDIDATE, 2, load_error="CUDA error: out of memory")
    with pytest.raises(CandidateRejected, match=r"load failed: .*CUDA error: out of memory"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1 and env.store().resident() == (1,)
    assert env.status(2) == "failed"
    assert env.outcomes("promote") == ["started", "failed"]  # never loaded, never judged


def test_candidate_answering_errors_on_the_golden_set_is_refused(env: Env) -> None:
    env.set_policy("promotion", warmup_requests=0)  # the golden run itself, not the warm-up, meets the error
    env.import_()
    env.twin.configure(CANDIDATE, 2, infer_error="stub process is not healthy")
    with pytest.raises(CandidateRejected, match=r"inference failed: .*stub process is not healthy"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1 and env.status(2) == "failed"
    assert env.outcomes("promote") == ["started", "candidate_loaded", "failed"]


def test_candidate_answering_errors_from_its_first_request_is_refused(env: Env) -> None:
    env.import_()  # the sample policy sends 3 warm-up batches
    env.twin.configure(CANDIDATE, 2, infer_error="stub process is not healthy")
    with pytest.raises(CandidateRejected, match="stub process is not healthy"):
        env.orchestrator().promote(MODEL, 2)
    assert env.status(2) == "failed"


def test_triton_going_away_while_the_candidate_is_judged_is_not_the_candidates_fault(env: Env) -> None:
    env.import_()
    requests = []

    def stops_triton_after_the_warm_up(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests.append(len(inputs[INPUT]))
        if len(requests) == 3:  # the sample policy's last warm-up batch
            env.twin.stop()
        return {OUTPUT: np.eye(10, dtype=np.float32)[LABELS[: len(inputs[INPUT])]]}

    env.backends.turn_bad(CANDIDATE, 2, stops_triton_after_the_warm_up)
    with pytest.raises(TritonUnreachable):
        env.orchestrator().promote(MODEL, 2)
    assert env.status(2) == "unverified"
    assert env.last().result == "failed"


def test_quarantined_version_needs_force(env: Env) -> None:
    env.import_()
    env.store().set_verification(2, Verification(status=VersionStatus.QUARANTINED, reason="NaN in production"))
    with pytest.raises(PolicyViolation, match=r"v2 is quarantined \(NaN in production\); promote it with --force"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1 and env.outcomes("promote") == []
    assert env.orchestrator().promote(MODEL, 2, force=True).changed
    assert env.served_by_twin() == 2 and env.status(2) == "verified"


def test_promoting_the_served_version_changes_nothing(env: Env) -> None:
    before = env.files()
    result = env.orchestrator().promote(MODEL, 1)
    assert (result.from_version, result.to_version, result.changed) == (1, 1, False)
    assert env.files() == before and env.records() == ()
    assert env.backends.loads == [(MODEL, 1)]


def test_triton_down_before_promote_changes_nothing(env: Env) -> None:
    env.import_()
    before = env.files()
    env.twin.stop()
    with pytest.raises(TritonUnreachable, match="Triton at twin://unit is unreachable"):
        env.orchestrator().promote(MODEL, 2)
    assert env.files() == before
    env.twin.start()
    assert env.served_by_twin() == 1


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_refused_admin_key_stops_promote_before_any_change(env: Env, key: str | None) -> None:
    env.import_()
    before = env.files()
    with pytest.raises(TritonForbidden, match=r"\(403\)") as refused:
        env.orchestrator(admin_key=key).promote(MODEL, 2)
    assert "unit-admin-key" not in str(refused.value)  # the right key is never printed
    assert env.files() == before
    assert env.served_by_twin() == 1 and env.backends.loads == [(MODEL, 1)]


def test_load_failing_at_the_switch_restores_the_previous_policy(env: Env) -> None:
    env.import_()
    env.twin.configure(MODEL, 2, load_error="model.onnx: device lost")  # the candidate entry still loads
    with pytest.raises(CandidateRejected, match=r"load of v2 into classifier failed: .*device lost"):
        env.orchestrator().promote(MODEL, 2)
    assert env.store().resident() == (1,)
    assert env.served_by_twin() == 1
    assert env.states() == {1: "READY", 2: "UNAVAILABLE"}
    assert env.status(2) == "failed"
    assert env.outcomes("promote") == ["started", "candidate_loaded", "verified", "failed"]
    assert env.store().journal.read().unfinished() is None
    assert env.orchestrator().status(MODEL)[0].in_sync


def test_disk_full_writing_the_config_keeps_serving_and_the_next_promote_works(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.import_()
    monkeypatch.setenv("ORCH_FAIL_WRITE", "classifier/config.pbtxt")
    with pytest.raises(OSError, match="No space left on device"):
        env.orchestrator().promote(MODEL, 2)
    assert env.store().served() == 1 and env.served_by_twin() == 1
    assert env.store().journal.read().unfinished() is None and env.last().result == "failed"
    assert env.status(2) == "verified"  # it passed its checks; only the switch failed
    assert not (env.repository / CANDIDATE).exists()
    monkeypatch.delenv("ORCH_FAIL_WRITE")
    assert env.orchestrator().promote(MODEL, 2).changed
    assert env.served_by_twin() == 2


def test_disk_full_writing_the_candidate_entry_refuses_promote(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.import_()
    monkeypatch.setenv("ORCH_FAIL_WRITE", f"{CANDIDATE}/config.pbtxt")
    with pytest.raises(OSError, match="No space left on device"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1 and env.status(2) == "unverified"
    assert env.outcomes("promote") == ["started", "failed"]
    assert not (env.repository / CANDIDATE).exists()


def test_promoting_a_third_version_drops_the_oldest_fallback(env: Env) -> None:
    env.promote_better()
    assert env.import_() == 3
    result = env.orchestrator().promote(MODEL, 3)
    assert (result.from_version, result.resident) == (2, (2, 3))
    assert env.served_by_twin() == 3
    assert env.states() == {1: "UNAVAILABLE", 2: "READY", 3: "READY"}  # keep_resident 1: v1 unloaded
    assert env.status(1) == "verified"  # dropped from residency, still a verified version
