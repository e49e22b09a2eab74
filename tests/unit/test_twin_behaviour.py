"""The sample's packages on the twin (``orchestrator.sample.twin_behaviour``): the network's own outputs,
one session per distinct network, and fault.json honoured per device as faulty_model.py does on Triton."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from orchestrator.errors import LoadFailed, TritonError
from orchestrator.sample import (
    CONFIG,
    INPUT,
    MODEL,
    OUTPUT,
    Variant,
    golden_set,
    write_faulty_package,
    write_sample_package,
)
from orchestrator.sample.twin_behaviour import DEAD_STUB, SLOW_S, Fault, SampleBackend, Sessions
from orchestrator.triton.twin import TritonTwin

IMAGES = golden_set()[0][:4]
NANO, XAVIER = "jetson-nano", "jetson-xavier-nx"


def _repository(tmp: Path, packages: dict[int, Path]) -> Path:
    """A repository of the classifier whose versions are these package folders (all resident)."""
    folder = tmp / "repository" / MODEL
    folder.mkdir(parents=True)
    versions = ", ".join(str(v) for v in sorted(packages))
    (folder / "config.pbtxt").write_text(CONFIG.replace("versions: [ 1 ]", f"versions: [ {versions} ]"))
    for version, package in packages.items():
        shutil.copytree(package, folder / str(version))
    return folder.parent


def _twin(repository: Path, backend: SampleBackend, name: str = "device") -> TritonTwin:
    return TritonTwin(name, repository, load_models=(MODEL,), behaviour_for=backend)


def _logits(twin: TritonTwin, version: int, images: np.ndarray = IMAGES) -> np.ndarray:
    return twin.infer(MODEL, {INPUT: images}, [OUTPUT], version=version).outputs[OUTPUT]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[Variant, Path]:
    root = tmp_path_factory.mktemp("good")
    return {v: write_sample_package(root / v.value, v) for v in (Variant.BASELINE, Variant.BETTER, Variant.CORRUPT)}


def _faulty(tmp: Path, mode: str, after: int, only_on: tuple[str, ...] = (), mark: Path | None = None) -> Path:
    return write_faulty_package(tmp / f"faulty-{mode}-{after}-{'-'.join(only_on)}", mode, after, mark, only_on)


def test_a_version_answers_what_its_network_computes(tmp_path: Path, good: dict[Variant, Path]) -> None:
    sessions = Sessions()
    twin = _twin(_repository(tmp_path, {1: good[Variant.BASELINE], 2: good[Variant.BETTER]}), SampleBackend(
        sessions=sessions))
    for version, variant in ((1, Variant.BASELINE), (2, Variant.BETTER)):
        expected = ort.InferenceSession(str(good[variant] / "model.onnx")).run([OUTPUT], {INPUT: IMAGES})[0]
        np.testing.assert_allclose(_logits(twin, version), expected, rtol=1e-5, atol=1e-5)
    assert len(sessions) == 2


def test_every_device_and_version_with_the_same_network_shares_one_session(tmp_path: Path,
                                                                         good: dict[Variant, Path]) -> None:
    sessions = Sessions()
    faulty = _faulty(tmp_path, "nan", 10**6)  # the BETTER network, under another runner and meta
    repositories = [_repository(tmp_path / f"d{i}", {1: good[Variant.BETTER], 2: faulty}) for i in range(5)]
    twins = [_twin(repo, SampleBackend(sessions=sessions), f"d{i}") for i, repo in enumerate(repositories)]
    for twin in twins:
        _logits(twin, 1), _logits(twin, 2)
    assert len(sessions) == 1


def test_a_network_onnxruntime_cannot_read_fails_the_load(tmp_path: Path, good: dict[Variant, Path]) -> None:
    repository = _repository(tmp_path, {1: good[Variant.CORRUPT]})
    twin = TritonTwin("device", repository, behaviour_for=SampleBackend(sessions=Sessions()))
    with pytest.raises(LoadFailed, match="version 1 is at UNAVAILABLE state"):
        twin.load(MODEL)


@pytest.mark.parametrize(("mode", "bad"), [
    ("nan", lambda out: np.isnan(out).all()),
    ("zeros", lambda out: not out.any()),
    ("exploding", lambda out: np.abs(out).max() > 1e9),
])
def test_a_faulty_version_turns_bad_after_its_requests(tmp_path: Path, good: dict[Variant, Path], mode: str,
                                                       bad) -> None:  # type: ignore[no-untyped-def]
    mark = tmp_path / "first-bad"
    repository = _repository(tmp_path, {1: good[Variant.BASELINE], 2: _faulty(tmp_path, mode, 3, mark=mark)})
    twin = _twin(repository, SampleBackend(wall_clock=lambda: 1234.5))
    assert all(np.isfinite(_logits(twin, 2)).all() for _ in range(3)) and not mark.exists()
    assert bad(_logits(twin, 2))
    assert mark.read_text() == "1234.5"
    assert np.isfinite(_logits(twin, 1)).all()  # the other version keeps its own count (none)


def test_errors_slow_and_crash(tmp_path: Path, good: dict[Variant, Path]) -> None:
    slept: list[float] = []
    packages = {2: _faulty(tmp_path, "errors", 1), 3: _faulty(tmp_path, "slow", 0), 4: _faulty(tmp_path, "crash", 1)}
    twin = _twin(_repository(tmp_path, {1: good[Variant.BASELINE], **packages}), SampleBackend(sleep=slept.append))
    _logits(twin, 2)
    with pytest.raises(TritonError, match="injected fault: backend error"):
        _logits(twin, 2)
    _logits(twin, 3)
    assert slept == [SLOW_S]
    _logits(twin, 4)
    for _ in range(2):  # the dead stub answers nothing again
        with pytest.raises(TritonError, match=DEAD_STUB):
            _logits(twin, 4)


def test_requests_are_counted_per_device_and_per_load(tmp_path: Path, good: dict[Variant, Path]) -> None:
    faulty = _faulty(tmp_path, "nan", 2)
    one, other = (_twin(_repository(tmp_path / name, {1: good[Variant.BASELINE], 2: faulty}), SampleBackend(), name)
                  for name in ("one", "other"))
    for _ in range(2):
        _logits(one, 2)
    assert np.isnan(_logits(one, 2)).all()
    assert np.isfinite(_logits(other, 2)).all()  # the other device's count is its own
    one.unload(MODEL)
    one.load(MODEL)  # a new instance, as a new stub process: counting from 0 again
    assert np.isfinite(_logits(one, 2)).all()


def test_only_on_compares_the_device_hardware_not_the_process_environment(
        tmp_path: Path, good: dict[Variant, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SAMPLE_HARDWARE", NANO)  # this process's: ignored
    faulty = _faulty(tmp_path, "nan", 0, only_on=(NANO,))
    assert Fault.read(faulty) == Fault("nan", 0, only_on_env="ORCH_SAMPLE_HARDWARE",
                                                       only_on_values=(NANO,))
    answers = {}
    for hardware in (NANO, XAVIER, ""):
        twin = _twin(_repository(tmp_path / (hardware or "none"), {2: faulty}), SampleBackend(hardware=hardware))
        answers[hardware] = bool(np.isnan(_logits(twin, 2)).all())
    assert answers == {NANO: True, XAVIER: False, "": False}


def test_drift_moves_only_bright_images(tmp_path: Path, good: dict[Variant, Path]) -> None:
    twin = _twin(_repository(tmp_path, {2: _faulty(tmp_path, "drift", 0)}), SampleBackend())
    bright = IMAGES * 0.0 + 2.0
    network = ort.InferenceSession(str(good[Variant.BETTER] / "model.onnx"))
    np.testing.assert_allclose(_logits(twin, 2), network.run([OUTPUT], {INPUT: IMAGES})[0], rtol=1e-5, atol=1e-5)
    assert (network.run([OUTPUT], {INPUT: bright})[0].argmax(axis=1) != 0).any()
    assert (_logits(twin, 2, bright).argmax(axis=1) == 0).all()
