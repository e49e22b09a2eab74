"""An ensemble in the repository on disk: which models are managed, the route, the candidate's route, truth.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.model import Contract, TensorSpec
from orchestrator.errors import PolicyViolation, RepositoryCorrupt, UnknownModel, UnmanagedModel
from orchestrator.store.golden import load_golden
from orchestrator.store.modelconfig import ensemble_of, read_config
from orchestrator.store.repository import ModelRepository

ENSEMBLE = """name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "IMAGE", data_type: TYPE_UINT8, dims: [ 8, 8, 3 ] }} ]
output [ {{ name: "BOXES", data_type: TYPE_FP32, dims: [ 4, 4 ] }} ]
ensemble_scheduling {{
  step [
    {{ model_name: "pre" model_version: -1 input_map {{ key: "IMAGE" value: "IMAGE" }}
      output_map {{ key: "INPUT" value: "tensor" }} }},
    {{ model_name: "net" model_version: {version} input_map {{ key: "INPUT" value: "tensor" }}
      output_map {{ key: "BOXES" value: "BOXES" }} }}
  ]
}}
"""
PLAIN = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "IN", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] }} ]
"""


def write(root: Path, name: str, config: str, versions: dict[str, bool]) -> None:
    """``versions``: folder name -> whether it carries meta.yaml."""
    (root / name).mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    for version, meta in versions.items():
        (root / name / version).mkdir()
        if meta:
            (root / name / version / "meta.yaml").write_text("model: x\n")


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    root = tmp_path / "repo"
    write(root, "net", PLAIN.format(name="net") + 'version_policy: { specific: { versions: [ 1 ] } }\n', {"1": True})
    write(root, "pre", PLAIN.format(name="pre"), {"1": False})
    write(root, "detection", ENSEMBLE.format(name="detection", version=-1), {"1": False})
    write(root, "fresh", PLAIN.format(name="fresh"), {})
    return ModelRepository(root, tmp_path / "state")


def test_ensembles_and_plain_steps_are_not_managed_models(repo: ModelRepository) -> None:
    assert repo.models() == ["fresh", "net"]
    assert repo.unmanaged() == {"detection": "ensemble", "pre": "plain"}
    assert repo.entries() == ["detection", "fresh", "net", "pre"]
    assert [e.name for e in repo.ensembles()] == ["detection"]


def test_a_command_naming_an_ensemble_says_whose_versions_it_serves(repo: ModelRepository) -> None:
    with pytest.raises(UnmanagedModel, match=r"'detection' is an ensemble: its versions are those of net"):
        repo.model("detection")
    with pytest.raises(UnmanagedModel, match=r"'pre' is a model the orchestrator does not manage"):
        repo.model("pre")
    with pytest.raises(UnknownModel, match=r"unknown model 'nothing'"):
        repo.model("nothing")


def test_a_managed_model_whose_meta_was_deleted_stays_managed_and_reported(repo: ModelRepository) -> None:
    store = repo.model("net")
    store.journal.path.write_text("")  # the orchestrator journaled it once
    (store.folder / "1" / "meta.yaml").unlink()
    assert "net" in repo.models()


def test_the_route_is_the_ensemble_that_follows_the_model(repo: ModelRepository) -> None:
    snap = repo.model("net").snapshot()
    assert snap.route is not None and snap.route.name == "detection"
    assert [t.name for t in snap.client_contract.inputs] == ["IMAGE"]
    assert snap.client_outputs == ["BOXES"]
    assert repo.model("fresh").snapshot().route is None


def test_two_routes_without_a_named_one_refuse_with_what_to_write(repo: ModelRepository) -> None:
    write(repo.root, "detection_hd", ENSEMBLE.format(name="detection_hd", version=-1), {"1": False})
    with pytest.raises(PolicyViolation, match=r"several ensembles.*route:"):
        _ = repo.model("net").snapshot().route
    (repo.state_root / "net" / "policy.yaml").write_text("promotion:\n  route: detection_hd\n")
    assert repo.model("net").snapshot().route.name == "detection_hd"  # type: ignore[union-attr]


def test_a_pinned_step_is_no_route(repo: ModelRepository) -> None:
    (repo.root / "detection" / "config.pbtxt").write_text(ENSEMBLE.format(name="detection", version=1))
    assert repo.model("net").snapshot().route is None


def test_the_candidate_route_points_at_the_candidate_entry_and_is_removed_with_it(repo: ModelRepository) -> None:
    store = repo.model("net")
    snap = store.snapshot()
    assert snap.route is not None
    name, config = store.write_candidate_route(snap.route)
    assert name == "detection__candidate"
    on_disk = ensemble_of(read_config(repo.root / name / "config.pbtxt")[1])
    assert on_disk is not None and [s.model for s in on_disk.steps] == ["pre", "net__candidate"]
    assert config.name == name and (repo.root / name / "1").is_dir()
    assert store.candidate_routes() == [name]
    assert "detection__candidate" not in repo.entries()  # never a route clients take
    store.remove_candidate_routes()
    assert not (repo.root / name).exists()
    assert (repo.root / "detection" / "config.pbtxt").read_text() == ENSEMBLE.format(name="detection", version=-1)


CONTRACT = Contract((TensorSpec("IMAGE", "UINT8", (8, 8, 3)),), (TensorSpec("BOXES", "FP32", (4, 4)),))


def test_a_detector_golden_set_reads_truth_rows_per_frame(tmp_path: Path) -> None:
    np.save(tmp_path / "IMAGE.npy", np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "truth.npy", np.array([[0, 1, 0, 0, 2, 2], [2, 0, 1, 1, 4, 4], [2, 3, 0, 0, 1, 1]],
                                             np.float32))
    golden = load_golden(tmp_path, CONTRACT)
    assert golden is not None and golden.detects and golden.labels is None
    assert golden.truths is not None and [len(t) for t in golden.truths] == [1, 0, 2]
    assert golden.truths[2].classes.tolist() == [0, 3]


def test_truth_naming_a_frame_that_does_not_exist_is_corrupt(tmp_path: Path) -> None:
    np.save(tmp_path / "IMAGE.npy", np.zeros((2, 8, 8, 3), np.uint8))
    np.save(tmp_path / "truth.npy", np.array([[5, 1, 0, 0, 2, 2]], np.float32))
    with pytest.raises(RepositoryCorrupt, match=r"truth.npy"):
        load_golden(tmp_path, CONTRACT)
    np.save(tmp_path / "truth.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(RepositoryCorrupt, match=r"truth.npy"):
        load_golden(tmp_path, CONTRACT)


def test_labels_and_truth_together_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "IMAGE.npy", np.zeros((1, 8, 8, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(1, np.int64))
    np.save(tmp_path / "truth.npy", np.array([[0, 1, 0, 0, 2, 2]], np.float32))
    with pytest.raises(RepositoryCorrupt, match=r"both labels.npy and truth.npy"):
        load_golden(tmp_path, CONTRACT)
