"""The sample detector's ensemble on a real Triton answers what the in-process pipeline computes.

Clients call ``detection`` (detector_pre -> detector -> detector_nms). The steps run the same numpy
code (``detector_ops``, shipped beside their model.py) as ``orchestrator.sample.detector``'s
in-process scoring, so the boxes and the mAP through Triton equal the ones the generator recorded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.sample import detector
from orchestrator.store.metafile import META_FILE, read_meta
from orchestrator.triton.client import Triton
from orchestrator.triton.embedded import EmbeddedTriton

from .conftest import ADMIN_KEY, ROOT

pytestmark = pytest.mark.triton

ENTRIES = (detector.PRE, detector.MODEL, detector.NMS, detector.ENSEMBLE)
SERVED = ROOT / "model_repository" / detector.MODEL / "1"


def _repository(tmp: Path) -> Path:
    repository = tmp / "model_repository"
    repository.mkdir()
    for entry in ENTRIES:
        shutil.copytree(ROOT / "model_repository" / entry, repository / entry)
    return repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    tmp = tmp_path_factory.mktemp("detection")
    running = EmbeddedTriton(_repository(tmp), tmp / "triton", load_models=ENTRIES, admin_key=ADMIN_KEY).start()
    try:
        yield running
    finally:
        running.kill()


@pytest.fixture(scope="module")
def answered(server: EmbeddedTriton) -> dict[str, np.ndarray]:
    """The ensemble's answers for the whole golden set, 8 frames a request."""
    client = Triton(server.url)
    frames = detector.golden_frames()
    try:
        parts = [client.infer(detector.ENSEMBLE, {"IMAGE": frames[i:i + 8]}, list(detector.OUTPUTS)).outputs
                 for i in range(0, len(frames), 8)]
    finally:
        client.close()
    return {name: np.concatenate([part[name] for part in parts]) for name in detector.OUTPUTS}


def test_the_ensemble_answers_what_the_in_process_pipeline_computes(answered):
    expected = detector.run_pipeline((SERVED / "model.onnx").read_bytes(), detector.golden_frames())
    assert {name: answered[name].dtype for name in detector.OUTPUTS} == {
        "BOXES": np.float32, "SCORES": np.float32, "CLASSES": np.int32, "COUNT": np.int32}
    assert np.array_equal(answered["COUNT"], expected["COUNT"])
    assert np.array_equal(answered["CLASSES"], expected["CLASSES"])
    np.testing.assert_allclose(answered["BOXES"], expected["BOXES"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(answered["SCORES"], expected["SCORES"], rtol=0, atol=1e-4)
    assert (answered["COUNT"] >= 1).mean() > 0.95  # every golden frame holds an object, nearly all are seen


def test_map_through_triton_is_the_golden_map_the_generator_recorded(answered):
    report = detector.golden_score(answered)
    recorded = read_meta(SERVED / META_FILE).verification.golden
    assert report.map50 == pytest.approx(recorded["map50"], abs=1e-9)
    assert report.map50_95 == pytest.approx(recorded["map50_95"], abs=1e-9)
    assert report.map50 > 0.7


def test_one_frame_a_request_answers_as_a_batch_does(server, answered):
    client = Triton(server.url)
    try:
        for index in (0, 5, 199):
            one = client.infer(detector.ENSEMBLE, {"IMAGE": detector.golden_frames()[index:index + 1]},
                               list(detector.OUTPUTS)).outputs
            for name in detector.OUTPUTS:
                np.testing.assert_allclose(one[name][0], answered[name][index], rtol=0, atol=1e-4, err_msg=name)
    finally:
        client.close()


def test_loading_the_ensemble_alone_loads_its_steps(tmp_path):
    """Explicit model control: ``--load-model=detection`` brings up detector_pre, detector and detector_nms."""
    alone = EmbeddedTriton(_repository(tmp_path), tmp_path / "triton", load_models=(detector.ENSEMBLE,),
                           admin_key=ADMIN_KEY).start()
    client = Triton(alone.url, ADMIN_KEY)
    try:
        ready = {(e.name, e.version): e.state.value for e in client.index()}
        assert ready == {(name, 1): "READY" for name in ENTRIES}
        found = client.infer(detector.ENSEMBLE, {"IMAGE": detector.golden_frames()[:1]}, ["COUNT"]).outputs
        assert found["COUNT"].shape == (1, 1)
    finally:
        client.close()
        alone.kill()


def test_a_detector_turning_to_nan_shows_nan_through_the_ensemble(tmp_path):
    """NaN from the network reaches the client (the NMS step keeps NaN scores): not "no detections"."""
    repository = _repository(tmp_path)
    mark = tmp_path / "first-bad"
    # The faulty runner around the committed network (a faulty package would fit the better head first).
    version = repository / detector.MODEL / "2"
    version.mkdir()
    shutil.copy(SERVED / "model.onnx", version / "model.onnx")
    shutil.copy(detector.FAULTY_RUNNER, version / "model.py")
    (version / "fault.json").write_text(json.dumps({"mode": "nan", "after_requests": 1, "mark": str(mark)}))
    config = repository / detector.MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace("versions: [ 1 ]", "versions: [ 2 ]"))
    server = EmbeddedTriton(repository, tmp_path / "triton", load_models=ENTRIES, admin_key=ADMIN_KEY).start()
    client = Triton(server.url)
    frames = detector.golden_frames()[:2]
    try:
        good = client.infer(detector.ENSEMBLE, {"IMAGE": frames}, list(detector.OUTPUTS)).outputs
        assert np.isfinite(good["SCORES"]).all() and not mark.exists()
        bad = client.infer(detector.ENSEMBLE, {"IMAGE": frames}, list(detector.OUTPUTS)).outputs
        assert bad["COUNT"].tolist() == [[detector.MAX_DETECTIONS]] * 2
        assert np.isnan(bad["SCORES"]).all() and mark.exists()
    finally:
        client.close()
        server.kill()
