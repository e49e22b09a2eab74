"""The sample detector without a server: reproducible files, real detection quality, variants, the NMS.

One in-process fit serves the module (the head is cached). The committed model_repository/detector was
written by the script in another process: equal bytes here are the second, independent build.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from orchestrator.core.detection import decode
from orchestrator.sample import detector
from orchestrator.sample.detector import DetectorVariant, build_onnx, golden_map
from orchestrator.sample.detector_ops import (
    CELLS,
    FIELDS,
    GRID,
    MAX_DETECTIONS,
    STRIDE,
    decode_head,
    nms_frame,
    postprocess,
    preprocess,
)
from orchestrator.store.metafile import META_FILE, read_meta
from orchestrator.store.modelconfig import contract, parse_config, version_policy

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
SCORED = [v for v in DetectorVariant if v not in (DetectorVariant.FAILING, DetectorVariant.CORRUPT)]


@pytest.fixture(scope="module")
def reports():
    return {variant: golden_map(variant) for variant in SCORED}


# --- reproducible files -----------------------------------------------------------------------

def test_the_script_names_the_variants_of_the_model_asked_for(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_models.py"), "package", "zeros",
                             "--model", "detector", "--out", str(tmp_path / "p")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "detector has no variant 'zeros'" in result.stderr
    assert "shifted" in result.stderr and not (tmp_path / "p").exists()


def _same_network(committed: bytes, built: bytes) -> None:
    """The same graph and, weight by weight, the same numbers up to the last bits: the ridge fit's float
    sums round differently on another CPU's BLAS kernels (AVX2 against AVX-512), so bytes can differ."""
    ours, theirs = onnx.load_from_string(committed), onnx.load_from_string(built)
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in theirs.graph.node]
    mine = {t.name: onnx.numpy_helper.to_array(t) for t in ours.graph.initializer}
    built_weights = {t.name: onnx.numpy_helper.to_array(t) for t in theirs.graph.initializer}
    assert set(mine) == set(built_weights)
    for name, weights in mine.items():
        assert weights.shape == built_weights[name].shape, name
        scale = float(np.abs(weights).max()) or 1.0  # a thousandth of its range: another fit is far further
        np.testing.assert_allclose(weights, built_weights[name], rtol=0, atol=1e-3 * scale, err_msg=name)


def test_the_committed_sample_detector_is_what_the_generator_builds(tmp_path):
    _same_network((REPOSITORY / "detector" / "1" / "model.onnx").read_bytes(), build_onnx(DetectorVariant.BASELINE))
    assert (REPOSITORY / "detector" / "config.pbtxt").read_text() == detector.CONFIG
    detector.write_steps(tmp_path)
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (REPOSITORY / path.relative_to(tmp_path)).read_bytes(), path
    meta = read_meta(REPOSITORY / "detector" / "1" / META_FILE)
    assert meta.version == 1 and meta.verification.verified_by == "seed"
    expected = detector.golden_metrics(DetectorVariant.BASELINE)
    assert set(meta.verification.golden) == set(expected)
    for name, value in expected.items():
        assert meta.verification.golden[name] == pytest.approx(value, abs=2e-3), name


@pytest.mark.parametrize("variant", [DetectorVariant.BETTER, DetectorVariant.SLOW, DetectorVariant.FAILING])
def test_a_package_written_twice_is_the_same_bytes(tmp_path, variant):
    first = detector.write_detector_package(tmp_path / "a", variant)
    build_onnx.cache_clear()  # the graph is built again; the fitted head is cached
    second = detector.write_detector_package(tmp_path / "b", variant)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)


def test_the_golden_set_is_reproducible_and_saved_as_the_orchestrator_reads_it(tmp_path):
    frames, truth = detector.golden_set()
    again_frames, again_truth = detector.sample_frames(detector.GOLDEN_SIZE, detector.GOLDEN_SEED)
    assert np.array_equal(frames, again_frames) and np.array_equal(truth, again_truth)
    detector.save_golden(tmp_path)
    for name in ("IMAGE.npy", "truth.npy"):
        committed = ROOT / "orchestrator_state" / "detector" / "golden" / name
        assert (tmp_path / name).read_bytes() == committed.read_bytes(), name
    assert frames.shape == (200, 64, 64, 3) and frames.dtype == np.uint8
    assert truth.dtype == np.float32 and truth.shape[1] == 6
    per_frame = np.bincount(truth[:, 0].astype(int), minlength=200)
    assert per_frame.min() >= 1 and per_frame.max() <= 4
    assert set(truth[:, 1].astype(int).tolist()) == {0, 1, 2, 3}
    sizes = np.concatenate([truth[:, 4] - truth[:, 2], truth[:, 5] - truth[:, 3]])
    assert sizes.min() >= 9 and sizes.max() <= 25
    training = detector.sample_frames(4, detector.TRAIN_SEED)[0]
    assert not np.array_equal(training, frames[:4])  # fitted and judged on different frames


@pytest.mark.parametrize("variant", [v for v in DetectorVariant if v is not DetectorVariant.CORRUPT])
def test_every_network_is_a_clean_opset_17_model(variant):
    model = onnx.load_from_string(build_onnx(variant))
    onnx.checker.check_model(model)
    assert model.ir_version == 8 and [o.version for o in model.opset_import] == [17]
    assert [i.name for i in model.graph.input] == ["INPUT"] and [o.name for o in model.graph.output] == ["RAW"]


def test_the_corrupt_network_does_not_parse():
    with pytest.raises(Exception):  # noqa: B017 - whatever onnx raises on a truncated file
        onnx.checker.check_model(onnx.load_from_string(build_onnx(DetectorVariant.CORRUPT)))


# --- detection quality ------------------------------------------------------------------------

def test_the_detector_really_detects_and_the_upgrade_is_better(reports):
    better, baseline = reports[DetectorVariant.BETTER], reports[DetectorVariant.BASELINE]
    assert better.map50 > 0.75
    assert better.map50 > baseline.map50 > 0.7
    assert better.map50_95 > baseline.map50_95
    assert better.truths == len(detector.golden_set()[1])


def test_the_worse_variant_trails_the_better_by_a_few_points(reports):
    better, worse = reports[DetectorVariant.BETTER], reports[DetectorVariant.WORSE]
    assert 0.03 <= better.map50 - worse.map50 <= 0.08
    # Below version 1 too, on both metrics: promoting it over the sample repository's v1 is refused.
    assert worse.map50 < reports[DetectorVariant.BASELINE].map50
    assert worse.map50_95 < reports[DetectorVariant.BASELINE].map50_95


@pytest.mark.parametrize("variant", [DetectorVariant.SHIFTED, DetectorVariant.CONFUSED, DetectorVariant.EMPTY])
def test_broken_heads_find_nothing_at_iou_half(reports, variant):
    assert reports[variant].map50 < 0.1


def test_the_empty_variant_answers_no_detections():
    outputs = detector.golden_outputs(DetectorVariant.EMPTY)
    assert (outputs["COUNT"] == 0).all() and not outputs["BOXES"].any()


def test_the_shifted_variant_finds_the_objects_but_misplaces_them():
    better = detector.golden_outputs(DetectorVariant.BETTER)
    shifted = detector.golden_outputs(DetectorVariant.SHIFTED)
    assert abs(int(shifted["COUNT"].sum()) - int(better["COUNT"].sum())) <= 0.1 * int(better["COUNT"].sum())


def test_the_nan_variant_shows_nan_in_the_outputs(reports):
    outputs = detector.golden_outputs(DetectorVariant.NAN)
    frames = decode(outputs)
    assert all(len(frame) == MAX_DETECTIONS for frame in frames)  # NaN candidates are kept, not dropped
    assert all(np.isnan(frame.scores).all() for frame in frames)
    assert reports[DetectorVariant.NAN].map50 == 0.0


def _macs(data: bytes) -> int:
    """Multiply-adds of the network's Conv nodes for one frame."""
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, kernel = shapes[node.output[0]], weights[node.input[1]]
            total += int(np.prod(out[1:])) * int(np.prod(kernel[1:]))
    return total


def test_the_slow_variant_answers_the_same_for_about_five_times_the_work():
    better = detector.golden_outputs(DetectorVariant.BETTER, detector.golden_frames()[:16])
    slow = detector.golden_outputs(DetectorVariant.SLOW, detector.golden_frames()[:16])
    for name in detector.OUTPUTS:
        assert np.array_equal(better[name], slow[name]), name
    assert 4.0 <= _macs(build_onnx(DetectorVariant.SLOW)) / _macs(build_onnx(DetectorVariant.BETTER)) <= 6.5


def test_failing_and_corrupt_have_no_in_process_score():
    for variant in (DetectorVariant.FAILING, DetectorVariant.CORRUPT):
        with pytest.raises(ValueError, match=variant.value):
            golden_map(variant)


# --- packages -----------------------------------------------------------------------------------

def test_a_detector_package_is_for_the_detector_and_lists_its_files(tmp_path):
    folder = detector.write_detector_package(tmp_path / "better", DetectorVariant.BETTER)
    meta = read_meta(folder / META_FILE)
    assert meta.model == "detector" and sorted(meta.artifacts) == ["model.onnx", "model.py"]
    assert meta.contract == detector.CONTRACT
    assert contract(parse_config(detector.CONFIG)) == meta.contract
    assert "variant=better" in meta.source


def test_the_failing_package_errors_from_the_first_request(tmp_path):
    folder = detector.write_detector_package(tmp_path / "failing", DetectorVariant.FAILING)
    assert (folder / "model.py").read_bytes() == detector.FAULTY_RUNNER.read_bytes()
    assert json.loads((folder / "fault.json").read_text()) == {"mode": "errors", "after_requests": 0, "mark": None}
    assert (folder / "model.onnx").read_bytes() == build_onnx(DetectorVariant.BETTER)


def test_a_faulty_detector_package_names_its_fault(tmp_path):
    folder = detector.write_faulty_detector_package(tmp_path / "f", "shifted", 60, mark=tmp_path / "mark")
    assert json.loads((folder / "fault.json").read_text()) == {"mode": "shifted", "after_requests": 60,
                                                               "mark": str(tmp_path / "mark")}
    assert read_meta(folder / META_FILE).source == "orchestrator.sample.detector fault=shifted"
    with pytest.raises(ValueError, match="unknown fault"):
        detector.write_faulty_detector_package(tmp_path / "g", "zeros", 1)


# --- configs ------------------------------------------------------------------------------------

def test_the_ensemble_follows_the_served_detector_through_its_steps():
    config = parse_config(detector.ENSEMBLE_CONFIG)
    assert config.platform == "ensemble" and config.max_batch_size == 8
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["detector_pre", "detector", "detector_nms"]
    assert all(s.model_version == -1 for s in steps)
    assert [t.name for t in config.output] == list(detector.OUTPUTS)
    for text in (detector.CONFIG, detector.PRE_CONFIG, detector.NMS_CONFIG):
        assert parse_config(text).max_batch_size == 8
    assert version_policy(parse_config(detector.CONFIG)).kind == "specific"
    nms = parse_config(detector.NMS_CONFIG)
    assert float(nms.parameters["score_threshold"].string_value) == detector.SCORE_THRESHOLD
    assert float(nms.parameters["iou_threshold"].string_value) == detector.IOU_THRESHOLD


def test_the_jetson_detector_serves_the_same_contract_as_a_tensorrt_plan():
    jetson = parse_config((ROOT / "triton_configs/jetson/detector/config.pbtxt").read_text())
    assert jetson.platform == "tensorrt_plan" and jetson.max_batch_size == 8
    assert contract(jetson) == contract(parse_config(detector.CONFIG))
    assert version_policy(jetson).kind == "specific"


# --- pre-processing and NMS ---------------------------------------------------------------------

def test_preprocessing_makes_normalised_chw():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 1, 2] = [255, 0, 128]
    out = preprocess(frames)
    assert out.shape == (2, 3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
    assert out[0, :, 1, 2] == pytest.approx([2.0, -2.0, 128 / 255 / 0.25 - 2.0], abs=1e-6)
    assert (out[1] == -2.0).all()


def _head(cells: dict[int, tuple[float, float, float, float, float, int]]) -> np.ndarray:
    """A head saying objectness logit, tx, ty, tw, th and a class for the given cells, nothing elsewhere."""
    raw = np.zeros((CELLS, FIELDS), np.float32)
    raw[:, 0] = -20.0
    for cell, (logit, tx, ty, tw, th, cls) in cells.items():
        raw[cell, :5] = [logit, tx, ty, tw, th]
        raw[cell, 5 + cls] = 10.0
    return raw


def test_the_head_decodes_to_pixel_boxes():
    boxes, scores, classes = decode_head(_head({GRID + 2: (5.0, 0.5, 0.25, 2.0, 1.0, 3)}))
    # cell row 1, column 2: centre (2.5, 1.25) cells, size 2 x 1 cells
    assert boxes[GRID + 2] == pytest.approx([2.5 * STRIDE - STRIDE, 1.25 * STRIDE - STRIDE / 2,
                                             2.5 * STRIDE + STRIDE, 1.25 * STRIDE + STRIDE / 2])
    assert classes[GRID + 2] == 3 and scores[GRID + 2] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-3)


def test_nms_suppresses_an_overlapping_box_of_the_same_class_and_keeps_other_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.3], np.float32)
    classes = np.array([1, 1, 2, 1], np.int32)
    out_boxes, out_scores, out_classes, count = nms_frame(boxes, scores, classes)
    assert count.tolist() == [3]
    assert out_scores[:3].tolist() == pytest.approx([0.9, 0.5, 0.3])  # the 0.6 box overlaps the 0.9 one
    assert out_classes[:3].tolist() == [1, 2, 1]
    assert out_boxes[0].tolist() == [1, 1, 11, 11]


def test_nms_pads_to_k_rows_of_zeros_and_drops_low_scores():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    out_boxes, out_scores, out_classes, count = nms_frame(boxes, np.array([0.8, 0.01], np.float32),
                                                          np.array([0, 0], np.int32))
    assert out_boxes.shape == (MAX_DETECTIONS, 4) and out_scores.shape == out_classes.shape == (MAX_DETECTIONS,)
    assert out_boxes.dtype == out_scores.dtype == np.float32 and out_classes.dtype == count.dtype == np.int32
    assert count.tolist() == [1]
    assert not out_boxes[1:].any() and not out_scores[1:].any() and not out_classes[1:].any()


def test_nms_keeps_at_most_k_detections_best_first():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 3000, (100, 2)).astype(np.float32)
    boxes = np.hstack([corners, corners + 5]).astype(np.float32)  # far apart: none suppresses another
    scores = rng.uniform(0.1, 1.0, 100).astype(np.float32)
    _, out_scores, _, count = nms_frame(boxes, scores, np.zeros(100, np.int32))
    assert count.tolist() == [MAX_DETECTIONS]
    assert out_scores.tolist() == sorted(scores.tolist(), reverse=True)[:MAX_DETECTIONS]


def test_nms_keeps_nan_scores_after_the_finite_ones():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([np.nan, 0.7, 0.01], np.float32)
    out_boxes, out_scores, _, count = nms_frame(boxes, scores, np.zeros(3, np.int32))
    assert count.tolist() == [2]
    assert out_scores[0] == pytest.approx(0.7) and np.isnan(out_scores[1])
    assert out_boxes[1].tolist() == [0, 0, 10, 10]


def test_a_nan_head_reaches_the_outputs_as_nan():
    raw = np.full((2, CELLS, FIELDS), np.nan, np.float32)
    outputs = postprocess(raw)
    assert outputs["COUNT"].tolist() == [[MAX_DETECTIONS], [MAX_DETECTIONS]]
    assert np.isnan(outputs["SCORES"]).all()


def test_postprocess_answers_the_ensemble_tensors_per_frame():
    raw = np.stack([_head({0: (5.0, 0.5, 0.5, 1.5, 1.5, 0), 63: (3.0, 0.5, 0.5, 2.0, 2.0, 2)}), _head({})])
    outputs = postprocess(raw)
    assert {k: v.shape for k, v in outputs.items()} == {"BOXES": (2, MAX_DETECTIONS, 4), "SCORES": (2, MAX_DETECTIONS),
                                                         "CLASSES": (2, MAX_DETECTIONS), "COUNT": (2, 1)}
    assert outputs["COUNT"].tolist() == [[2], [0]]
    assert outputs["CLASSES"][0, :2].tolist() == [0, 2]
    frames = decode(outputs)
    assert [len(f) for f in frames] == [2, 0]


# --- the fault-injection runner ---------------------------------------------------------------

@pytest.fixture
def faulty(monkeypatch, tmp_path):
    """detector_faulty's model, with a stand-in for Triton's pb_utils (it only runs inside the stub)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("detector_faulty_runner", detector.FAULTY_RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def make(mode: str):
        model = module.TritonPythonModel()
        model.mode, model.after, model.mark, model.served = mode, 0, str(tmp_path / f"{mode}.mark"), 0
        return model

    return make


def _one_object_head() -> np.ndarray:
    return _head({GRID * 3 + 3: (6.0, 0.5, 0.5, 2.0, 2.0, 1)})[None]  # a 16 px box centred at (28, 28), class 1


@pytest.mark.parametrize(("mode", "boxes", "classes", "count"), [
    ("empty", None, None, 0),
    ("shifted", [28.0, 28.0, 44.0, 44.0], 1, 1),
    ("confused", [20.0, 20.0, 36.0, 36.0], 0, 1),
])
def test_the_faulty_runner_turns_the_head_bad_as_its_mode_says(faulty, tmp_path, mode, boxes, classes, count):
    model = faulty(mode)
    outputs = postprocess(model._bad(_one_object_head(), 0.001))
    assert outputs["COUNT"].tolist() == [[count]]
    if count:
        assert outputs["BOXES"][0, 0].tolist() == pytest.approx(boxes)
        assert outputs["CLASSES"][0, 0] == classes
    assert (tmp_path / f"{mode}.mark").exists()  # the wall time of the first bad answer


def test_the_faulty_runner_answers_nan_errors_or_slowly(faulty):
    assert np.isnan(postprocess(faulty("nan")._bad(_one_object_head(), 0.0))["SCORES"]).all()
    with pytest.raises(RuntimeError, match="injected fault"):
        faulty("errors")._bad(_one_object_head(), 0.0)
    started = time.perf_counter()
    same = faulty("slow")._bad(_one_object_head(), 0.01)
    assert time.perf_counter() - started >= 0.04 and np.array_equal(same, _one_object_head())
