"""The replay gate inside promote, on the Triton twin: recorded production inputs answered by the candidate
and the served version (tests/integration/test_replay.py does the same against a real server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator import faults
from orchestrator.errors import CandidateRejected
from orchestrator.sample import INPUT, OUTPUT, Variant, golden_set, sample_images
from orchestrator.store.replay import ring_folder, tracing_ring
from orchestrator.store.replay_ring import RingWriter
from orchestrator.triton.twin import VirtualClock
from tests.conftest import BuildKey
from tests.unit.usecases.conftest import CANDIDATE, MODEL, ROOT, Backends, Env, onnx_session

BRIGHT_ABOVE = 0.8  # orchestrator/sample/faulty_model.py's "drift" fault: bright images all come out class 0


def _bright(count: int, seed: int = 21) -> np.ndarray:
    return (sample_images(count, seed)[0] + np.float32(0.5)).astype(np.float32)


def _record(env: Env, images: np.ndarray) -> RingWriter:
    """Each image as one recorded request, as the drift sampler would offer it (every one kept)."""
    ring = RingWriter(ring_folder(env.state / MODEL), 10**7, every_n=1)
    for image in images:
        ring.offer({INPUT: image[None]})
    ring.close()
    return ring


def _class0_when_bright(env: Env, version: int) -> None:
    """The candidate answers like v2 except that bright images all come out class 0: golden checks pass it."""
    session = onnx_session(env.repository / MODEL / str(version) / "model.onnx")

    def behaviour(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs[INPUT]
        logits = session.run([OUTPUT], {INPUT: images})[0].copy()
        bright = images.reshape(len(images), -1).mean(axis=1) > BRIGHT_ABOVE
        logits[bright, 0] = logits[bright].max(axis=1) + 5.0
        return {OUTPUT: logits}

    env.backends.turn_bad(CANDIDATE, version, behaviour)


@pytest.fixture
def serving_v2(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path],
               monkeypatch: pytest.MonkeyPatch) -> Env:
    """v2 (the better sample) serves on the twin (as tests/unit/usecases/conftest.py's ``env``); v3, the same
    network, is imported; replay is on with short thresholds."""
    for name in (faults.ENV, faults.ENV_WRITE, "ORCH_TRUSTED_KEYS", "ORCH_ALLOW_UNSIGNED"):
        monkeypatch.delenv(name, raising=False)
    repository, state = tmp_path / "model_repository", tmp_path / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository)
    shutil.copytree(ROOT / "orchestrator_state", state)
    (state / "trusted_keys").mkdir()
    shutil.copy(build_key.public, state / "trusted_keys" / build_key.public.name)
    env = Env(tmp_path, repository, state, VirtualClock(), Backends(), None, packages, build_key,  # type: ignore[arg-type]
              monkeypatch)
    env.twin = env.make_twin()
    env.promote_better()
    assert env.import_(Variant.BETTER) == 3
    env.set_policy("replay", enabled=True, min_samples=20, limit=60)
    return env


def test_a_candidate_agreeing_on_recorded_inputs_is_promoted_with_the_replay_metrics_journaled(
        serving_v2: Env) -> None:
    env = serving_v2
    golden = golden_set()[0]
    _record(env, np.concatenate([_bright(30), golden[:5]]))
    result = env.orchestrator().promote(MODEL, 3)
    assert result.changed and env.served_by_twin() == 3
    # 5 of the records are golden inputs (the watcher's probes pass through the traced model): skipped.
    replayed = {k: v for k, v in result.metrics.items() if k.startswith("replay_")}
    assert replayed == {"replay_samples": 30.0, "replay_skipped": 5.0, "replay_top1_agreement": 1.0}
    succeeded = env.last("promote")
    assert succeeded.result == "succeeded" and succeeded.details["metrics"]["replay_samples"] == 30.0
    assert env.store().attestation(3).verification.golden["replay_top1_agreement"] == 1.0


def test_a_candidate_failing_only_on_bright_recorded_inputs_is_refused_by_replay(serving_v2: Env) -> None:
    env = serving_v2
    _record(env, _bright(40))
    _class0_when_bright(env, 3)
    with pytest.raises(CandidateRejected, match=r"top-1 agreement with the served version 0\.[01]") as refused:
        env.orchestrator().promote(MODEL, 3)
    assert refused.value.exit_code == 5 and "replay.min_top1_agreement 0.5" in refused.value.reason
    assert env.served_by_twin() == 2 and env.status(3) == "failed"
    failed = env.last("promote")
    assert failed.result == "failed" and failed.details["metrics"]["replay_samples"] == 40.0
    assert failed.details["metrics"]["accuracy"] > 0.9  # the golden set alone passed it


def test_the_same_candidate_passes_when_replay_is_off(serving_v2: Env) -> None:
    env = serving_v2
    env.set_policy("replay", enabled=False)
    _record(env, _bright(40))
    _class0_when_bright(env, 3)
    result = env.orchestrator().promote(MODEL, 3)
    assert result.changed and not [k for k in result.metrics if k.startswith("replay_")]


def test_too_few_recorded_inputs_is_inconclusive_and_the_promote_goes_on(serving_v2: Env) -> None:
    env = serving_v2
    _record(env, _bright(5))
    _class0_when_bright(env, 3)  # it would fail, but five inputs say too little
    said: list[str] = []
    orch = env.orchestrator()
    orch.progress = said.append
    result = orch.promote(MODEL, 3)
    assert result.changed and result.metrics["replay_samples"] == 5.0
    assert "replay inconclusive: 5 recorded production inputs compared, replay.min_samples is 20" in said


def test_too_few_recorded_inputs_refuses_the_promote_when_replay_is_required(serving_v2: Env) -> None:
    env = serving_v2
    env.set_policy("replay", require=True)
    with pytest.raises(CandidateRejected, match=r"0 recorded production inputs compared.*replay\.require"):
        env.orchestrator().promote(MODEL, 3)
    assert env.served_by_twin() == 2


def test_a_candidate_erroring_on_a_recorded_input_the_served_version_answers_is_refused(serving_v2: Env) -> None:
    env = serving_v2
    _record(env, _bright(30))

    def errors_on_bright(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs[INPUT].mean() > BRIGHT_ABOVE:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {OUTPUT: onnx_session(env.repository / MODEL / "3" / "model.onnx").run([OUTPUT], inputs)[0]}

    env.backends.turn_bad(CANDIDATE, 3, errors_on_bright)
    with pytest.raises(CandidateRejected, match=r"the candidate failed on one that the served version answers.*"
                                                r"illegal memory access"):
        env.orchestrator().promote(MODEL, 3)
    assert env.status(3) == "failed"


def test_recorded_inputs_of_another_contract_and_unreadable_files_are_skipped(serving_v2: Env) -> None:
    env = serving_v2
    ring = RingWriter(ring_folder(env.state / MODEL), 10**7, every_n=1)
    for image in _bright(25):
        ring.offer({INPUT: image[None]})
    ring.offer({"OLD_INPUT": _bright(1)})
    ring.close()
    newest = sorted(ring_folder(env.state / MODEL).glob("*.npz"))[-2]
    newest.write_bytes(b"cut short")
    result = env.orchestrator().promote(MODEL, 3)
    assert (result.metrics["replay_samples"], result.metrics["replay_skipped"]) == (24.0, 2.0)


def test_the_drift_sampler_records_only_for_a_directly_called_model_with_replay_on(serving_v2: Env) -> None:
    env = serving_v2
    ring = tracing_ring(env.store())
    assert ring is not None and ring.every_n == 20 and ring.max_bytes == 64 * 2**20
    # A traced golden probe (six significant digits) is not recorded; a camera image is.
    probe = np.array([float(f"{v:.6g}") for v in golden_set()[0][:4].ravel()], np.float32).reshape(4, 3, 16, 16)
    assert ring.skip is not None and ring.skip({INPUT: probe}) and not ring.skip({INPUT: _bright(1)})
    ring.close()
    env.set_policy("replay", enabled=False)
    assert tracing_ring(env.store()) is None
