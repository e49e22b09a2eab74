"""A small, real object detector for the sample repository, served as a Triton ensemble.

Clients call ``detection`` (platform ensemble): ``detector_pre`` (python: camera frame uint8
[H, W, 3] -> normalised float32 [3, H, W]) -> ``detector`` (python + onnxruntime: the network,
the model whose versions the orchestrator manages) -> ``detector_nms`` (python: dense head ->
BOXES [K, 4], SCORES [K], CLASSES [K], COUNT [1]). Every step names ``model_version: -1``, so
the ensemble follows whichever version of ``detector`` serves.

Data: synthetic 64x64 frames, a noisy background of a random colour, 1-4 objects of 4 classes
(a red square, a green disc, a blue ring, a yellow triangle, each colour jittered), 10-24 px,
with their boxes; no two objects share a grid cell.

Network (ONNX, opset 17): a fixed random convolutional feature extractor (Conv+Relu layers,
total stride 8) and a 3x3 convolutional head on the 8x8 grid, 9 values per cell (objectness
logit, box centre and size in cells, 4 class logits), reshaped to RAW [64, 9]. The head is
fitted by ridge regression on the extractor's features of synthetic frames: the objectness on
every cell (1 where an object's centre falls), box and classes on the cells holding a centre;
the objectness is then calibrated into a logit by a logistic fit (Platt scaling). Everything
comes from fixed seeds and is rounded, so the files are byte-for-byte reproducible.

The extractor (BACKBONE) is sized for cost, so that probes cost what they would on a device:
3x3 Conv+Relu 3->48 (stride 1), 48->96 (2), 96->96 (1), 96->192 (2), 192->128 (2), then the
head 128->9: 190 M multiply-adds and 0.52 M weights a frame. Measured on the 2-core CI machine
(onnxruntime, one thread): about 3.8 ms of CPU a frame at batch 1 and 8 alike; one request
through the ensemble in Triton about 6.5-7 ms at batch 1, 37 ms at batch 8.

Variants reproduce what goes wrong with real detector updates; ``detector_ops`` holds the pre-
processing and NMS, shared with the served steps.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchestrator.core.detection import MapReport, decode, mean_average_precision, truths_from_table
from orchestrator.core.journal import now_iso
from orchestrator.delivery.package import write_package
from orchestrator.sample import SEED_TIME
from orchestrator.sample.detector_ops import (
    CELLS,
    CLASSES,
    FIELDS,
    GRID,
    HEIGHT,
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    STRIDE,
    WIDTH,
    postprocess,
    preprocess,
)
from orchestrator.store.metafile import Contract, TensorSpec, VersionMeta

MODEL, PRE, NMS, ENSEMBLE = "detector", "detector_pre", "detector_nms", "detection"
STEPS = (PRE, MODEL, NMS)  # the ensemble's steps, in order
INPUT, OUTPUT = "INPUT", "RAW"
IMAGE = "IMAGE"
OUTPUTS = ("BOXES", "SCORES", "CLASSES", "COUNT")
SHAPE = (3, HEIGHT, WIDTH)
CONTRACT = Contract(
    inputs=(TensorSpec(INPUT, "FP32", SHAPE),),
    outputs=(TensorSpec(OUTPUT, "FP32", (CELLS, FIELDS)),),
)
HERE = Path(__file__).parent
RUNNER = HERE / "detector_model.py"
FAULTY_RUNNER = HERE / "detector_faulty.py"
PRE_RUNNER = HERE / "detector_pre.py"
NMS_RUNNER = HERE / "detector_nms.py"
OPS = HERE / "detector_ops.py"  # shipped beside the steps' model.py: the maths the generator scores with
RING = HERE.parent / "store" / "replay_ring.py"  # shipped beside detector_pre's model.py (replay)

# Frames and truth. The seeds of fitting and golden set differ.
GOLDEN_SIZE = 200
GOLDEN_SEED = 7
TRAIN_SEED = 3
BASELINE_SAMPLES = 1000  # frames the baseline head is fitted on (version 1 of the sample repository)
BETTER_SAMPLES = 2000  # and the upgrade's
SIZES = (10.0, 24.0)
NOISE = 18.0
COLOURS = np.array([[200, 50, 40], [40, 180, 60], [50, 80, 210], [210, 190, 40]], np.float32)
CLASS_NAMES = ("square", "disc", "ring", "triangle")

# The feature extractor: (output channels, stride) of each 3x3 Conv+Relu; total stride STRIDE.
BACKBONE = ((48, 1), (96, 2), (96, 1), (192, 2), (128, 2))
RIDGE = 10.0
CLASS_SCALE = 12.0  # class logits = this x the fitted one-hot regression
# The worse variant: Gaussian noise of this many times each output's mean |weight| added to the head
# (measured: mAP@0.5 5.6 points below better, mAP@0.5:0.95 1.8 points below the baseline).
WORSE_NOISE = 0.35
EMPTY_BIAS = -100.0
# The slow variant's dead branch: (channels, stride) of 3x3 Conv+Relu layers on the input, its result
# multiplied by zero and added to RAW: the same outputs for about five times the work.
SLOW_BRANCH = ((64, 1),) * 6


class DetectorVariant(str, enum.Enum):
    BASELINE = "baseline"  # fitted on fewer frames: version 1 in the sample repository
    BETTER = "better"  # fitted on more frames: the upgrade the demo promotes
    NAN = "nan"  # NaN in the objectness head: every score NaN
    EMPTY = "empty"  # objectness bias far below any threshold: no detections
    SHIFTED = "shifted"  # boxes moved by half their size right and down: IoU with the truth under 0.5
    CONFUSED = "confused"  # classes 0<->1 and 2<->3 swapped: right boxes, wrong labels
    WORSE = "worse"  # noise in the head: loads, runs, scores a few points lower
    SLOW = "slow"  # the same outputs from a network doing about five times the work
    FAILING = "failing"  # loads; its runner answers every request with an error
    CORRUPT = "corrupt"  # truncated network file: Triton cannot load it


Variant = DetectorVariant  # the name the classifier's enum has


# --- data ---------------------------------------------------------------------------------

def _mask(cls: int, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    r = size / 2
    if cls == 0:
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    if cls == 1:
        return d2 <= r * r
    if cls == 2:
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    top = cy - r
    return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def sample_frames(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames, uint8 [count, H, W, 3], and their truth, float32 rows (frame, class, x1, y1, x2, y2).

    A box is the drawn object's pixel extent (x2, y2 exclusive). Objects overlap little (IoU <= 0.1) and
    never share the grid cell of their centre (the head finds one object per cell)."""
    rng = np.random.default_rng(seed)
    grid_y, grid_x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) + np.float32(0.5)
    frames = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    truth: list[list[float]] = []
    for frame in range(count):
        image = np.broadcast_to(rng.uniform(60, 170, 3).astype(np.float32), (HEIGHT, WIDTH, 3)).copy()
        wanted = int(rng.integers(1, 5))
        placed: list[tuple[int, np.ndarray]] = []
        cells: set[tuple[int, int]] = set()
        for _ in range(40):
            if len(placed) == wanted:
                break
            cls = int(rng.integers(0, CLASSES))
            size = float(rng.uniform(*SIZES))
            cx = float(rng.uniform(size / 2, WIDTH - size / 2))
            cy = float(rng.uniform(size / 2, HEIGHT - size / 2))
            # Every shape lies within size / 2 of its centre: draw in that window only.
            x0, y0 = max(0, int(cx - size / 2) - 1), max(0, int(cy - size / 2) - 1)
            window = np.s_[y0:int(cy + size / 2) + 2, x0:int(cx + size / 2) + 2]
            mask = _mask(cls, cx, cy, size, grid_y[window], grid_x[window])
            ys, xs = np.nonzero(mask)
            box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float32)
            cell = (int((box[1] + box[3]) / 2 // STRIDE), int((box[0] + box[2]) / 2 // STRIDE))
            if cell in cells or any(_box_iou(box, other) > 0.1 for _, other in placed):
                continue
            image[window][mask] = COLOURS[cls] + rng.uniform(-30, 30, 3).astype(np.float32)
            placed.append((cls, box))
            cells.add(cell)
        image += rng.normal(0, NOISE, (HEIGHT, WIDTH, 3)).astype(np.float32)
        frames[frame] = np.clip(np.round(image), 0, 255).astype(np.uint8)
        truth += [[frame, cls, *box] for cls, box in placed]
    return frames, np.array(truth, np.float32).reshape(-1, 6)


@functools.lru_cache(maxsize=1)
def golden_set() -> tuple[np.ndarray, np.ndarray]:
    """The golden frames (IMAGE) and their truth table."""
    return sample_frames(GOLDEN_SIZE, GOLDEN_SEED)


def golden_frames() -> np.ndarray:
    """The golden frames, uint8 [GOLDEN_SIZE, H, W, 3]: what a camera sends the ensemble."""
    return golden_set()[0]


def save_golden(folder: Path) -> None:
    """``IMAGE.npy`` (uint8 [200, H, W, 3]) and ``truth.npy`` (float32 rows frame, class, x1, y1, x2, y2)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames, truth = golden_set()
    np.save(folder / f"{IMAGE}.npy", frames)
    np.save(folder / "truth.npy", truth)


def head_targets(truth: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """What the head should say for each cell of ``count`` frames, [count * CELLS, FIELDS], and which
    cells hold an object's centre (where box and class are learnt)."""
    targets = np.zeros((count, CELLS, FIELDS), np.float64)
    centre = np.zeros((count, CELLS), bool)
    for frame, cls, x1, y1, x2, y2 in truth.astype(np.float64):
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        row, col = int(cy), int(cx)
        cell = row * GRID + col
        targets[int(frame), cell, :5] = [1.0, cx - col, cy - row, (x2 - x1) / STRIDE, (y2 - y1) / STRIDE]
        targets[int(frame), cell, 5 + int(cls)] = 1.0
        centre[int(frame), cell] = True
    return targets.reshape(-1, FIELDS), centre.reshape(-1)


# --- network ------------------------------------------------------------------------------

def _conv_layers(layers: tuple[tuple[int, int], ...], seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Fixed random 3x3 convolutions (He-scaled, rounded): (weight, bias, stride) per layer."""
    rng = np.random.default_rng(seed)
    found, channels = [], 3
    for out, stride in layers:
        weight = rng.normal(0, np.sqrt(2 / (channels * 9)), (out, channels, 3, 3))
        found.append((np.round(weight, 3).astype(np.float32), np.zeros(out, np.float32), stride))
        channels = out
    return found


def _conv_nodes(prefix: str, source: str, layers: list[tuple[np.ndarray, np.ndarray, int]]
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    nodes, weights = [], []
    for i, (weight, bias, stride) in enumerate(layers):
        name = f"{prefix}{i}"
        nodes += [helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_conv"], kernel_shape=[3, 3],
                                   strides=[stride, stride], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}_conv"], [f"{name}_relu"])]
        weights += [numpy_helper.from_array(weight, f"{name}_w"), numpy_helper.from_array(bias, f"{name}_b")]
        source = f"{name}_relu"
    return nodes, weights, source


def _model(nodes: list[onnx.NodeProto], weights: list[onnx.TensorProto], output: str, dims: list[object],
           name: str) -> bytes:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)],
        initializer=weights,
    )
    model = helper.make_model(graph, producer_name="triton-orchestrator-sample",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _session(data: bytes) -> Any:  # an onnxruntime.InferenceSession (imported lazily)
    import onnxruntime as ort  # noqa: PLC0415 - only the sample tooling needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the runner: the same numbers, on any machine's core count
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(session: Any, inputs: np.ndarray, batch: int = 50) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT: inputs[i:i + batch]})[0] for i in range(0, len(inputs), batch)])


def _neighbourhoods(features: np.ndarray) -> np.ndarray:
    """[N, C, GRID, GRID] features as the head's inputs per cell: the 3x3 neighbourhood (zero padded, as the
    head's Conv pads) and a constant 1, float32 [N * CELLS, 9 * C + 1]; column (dy * 3 + dx) * C + c."""
    count, channels = features.shape[:2]
    padded = np.pad(features, ((0, 0), (0, 0), (1, 1), (1, 1))).transpose(0, 2, 3, 1)  # [N, GRID+2, GRID+2, C]
    out = np.empty((count, GRID, GRID, 9 * channels + 1), np.float32)
    for dy in range(3):
        for dx in range(3):
            at = (dy * 3 + dx) * channels
            out[..., at:at + channels] = padded[:, dy:dy + GRID, dx:dx + GRID]
    out[..., -1] = 1.0
    return out.reshape(count * CELLS, 9 * channels + 1)


def _head_output(features: np.ndarray, column: np.ndarray) -> np.ndarray:
    """One head output for every cell, [N * CELLS]: ``_neighbourhoods(features) @ column`` without the copy."""
    count, channels = features.shape[:2]
    padded = np.pad(features, ((0, 0), (0, 0), (1, 1), (1, 1))).astype(np.float64)
    taps = column[:-1].reshape(3, 3, channels)
    out = np.full((count, GRID, GRID), column[-1])
    for dy in range(3):
        for dx in range(3):
            out += np.tensordot(taps[dy, dx], padded[:, :, dy:dy + GRID, dx:dx + GRID], axes=([0], [1]))
    return out.reshape(count * CELLS)


def _features_session() -> Any:
    nodes, weights, output = _conv_nodes("backbone", INPUT, _conv_layers(BACKBONE, seed=0))
    return _session(_model(nodes, weights, output, ["batch", BACKBONE[-1][0], GRID, GRID], "detector_features"))


@functools.lru_cache(maxsize=1)
def _fits() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The head fitted on the first BASELINE_SAMPLES and on all BETTER_SAMPLES training frames: samples ->
    (weight [FIELDS, C, 3, 3], bias [FIELDS]), rounded. One pass of the extractor serves both fits.

    Ridge regression: the objectness on every cell, box and classes on the cells holding a centre. The
    sums of each chunk of frames are float32 products (BLAS), added up in float64."""
    frames, truth = sample_frames(BETTER_SAMPLES, TRAIN_SEED)
    features = _run(_features_session(), preprocess(frames))
    targets, centre = head_targets(truth, BETTER_SAMPLES)
    columns = 9 * features.shape[1] + 1
    gram, moment = np.zeros((columns, columns)), np.zeros((columns, 1))
    gram_c, moment_c = np.zeros((columns, columns)), np.zeros((columns, FIELDS - 1))
    heads = {}
    chunk = 250
    for start in range(0, BETTER_SAMPLES, chunk):
        x = _neighbourhoods(features[start:start + chunk])
        rows = slice(start * CELLS, (start + chunk) * CELLS)
        t, c = targets[rows], centre[rows]
        gram += x.T @ x
        moment += x.T @ t[:, :1].astype(np.float32)
        xc = x[c].astype(np.float64)
        gram_c += xc.T @ xc
        moment_c += xc.T @ t[c, 1:]
        samples = start + chunk
        if samples not in (BASELINE_SAMPLES, BETTER_SAMPLES):
            continue
        ridge = RIDGE * np.eye(columns)
        objectness = np.linalg.solve(gram + ridge, moment)[:, 0]
        solution = np.hstack([np.zeros((columns, 1)), np.linalg.solve(gram_c + ridge, moment_c)])
        # Platt scaling: the regressed objectness p becomes the logit a * p + b, fitted on the same cells.
        a, b = _platt(_head_output(features[:samples], objectness), targets[: samples * CELLS, 0])
        solution[:, 0] = a * objectness
        solution[-1, 0] += b
        solution[:, 5:] *= CLASS_SCALE
        heads[samples] = _as_conv(solution)
    return heads


def _platt(score: np.ndarray, target: np.ndarray, rounds: int = 25) -> tuple[float, float]:
    """(a, b) of the logistic fit P(target) = sigmoid(a * score + b), by Newton's method."""
    a, b = 1.0, 0.0
    for _ in range(rounds):
        prob = 1 / (1 + np.exp(-(a * score + b)))
        weight = prob * (1 - prob)
        gradient = np.array([((prob - target) * score).sum(), (prob - target).sum()])
        hessian = np.array([[(weight * score * score).sum(), (weight * score).sum()],
                            [(weight * score).sum(), weight.sum()]]) + 1e-9 * np.eye(2)
        a, b = np.array([a, b]) - np.linalg.solve(hessian, gradient)
    return float(a), float(b)


def _as_conv(solution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A [9 * C + 1, FIELDS] solution as the head's Conv weight [FIELDS, C, 3, 3] and bias, rounded: the
    rounding hides last-bit differences between BLAS builds."""
    channels = (solution.shape[0] - 1) // 9
    weight = solution[:-1].reshape(3, 3, channels, FIELDS).transpose(3, 2, 0, 1)
    return np.round(weight, 4).astype(np.float32), np.round(solution[-1], 4).astype(np.float32)


def _head(variant: DetectorVariant) -> tuple[np.ndarray, np.ndarray]:
    heads = _fits()
    weight, bias = heads[BASELINE_SAMPLES if variant is DetectorVariant.BASELINE else BETTER_SAMPLES]
    weight, bias = weight.copy(), bias.copy()
    if variant is DetectorVariant.NAN:
        weight[0, 0] = np.nan
    elif variant is DetectorVariant.EMPTY:
        bias[0] = np.float32(EMPTY_BIAS)
    elif variant is DetectorVariant.SHIFTED:
        # centre += half the size, in x (tx += tw / 2) and y (ty += th / 2)
        weight[1:3] += 0.5 * weight[3:5]
        bias[1:3] += 0.5 * bias[3:5]
    elif variant is DetectorVariant.CONFUSED:
        weight[5:9], bias[5:9] = weight[[6, 5, 8, 7]], bias[[6, 5, 8, 7]]
    elif variant is DetectorVariant.WORSE:
        rng = np.random.default_rng(11)
        scale = np.float32(WORSE_NOISE) * np.abs(weight).mean(axis=(1, 2, 3), keepdims=True)
        weight = np.round(weight + scale * rng.standard_normal(weight.shape).astype(np.float32), 4)
    return weight.astype(np.float32), bias.astype(np.float32)


@functools.cache
def build_onnx(variant: DetectorVariant) -> bytes:
    """The network of ``variant``: model.onnx bytes (the corrupt one truncated)."""
    weight, bias = _head(variant)
    head = "fast" if variant is DetectorVariant.SLOW else OUTPUT
    nodes, weights, features = _conv_nodes("backbone", INPUT, _conv_layers(BACKBONE, seed=0))
    nodes += [
        helper.make_node("Conv", [features, "head_w", "head_b"], ["head"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["head", "cells_shape"], ["cells"]),
        helper.make_node("Transpose", ["cells"], [head], perm=[0, 2, 1]),
    ]
    weights += [numpy_helper.from_array(weight, "head_w"), numpy_helper.from_array(bias, "head_b"),
                numpy_helper.from_array(np.array([0, FIELDS, CELLS], np.int64), "cells_shape")]
    if variant is DetectorVariant.SLOW:
        extra, more, branch = _conv_nodes("slow", INPUT, _conv_layers(SLOW_BRANCH, seed=5))
        nodes += [*extra,
                  helper.make_node("ReduceMean", [branch], ["slow_mean"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Reshape", ["slow_mean", "slow_shape"], ["slow_cells"]),
                  helper.make_node("Mul", ["slow_cells", "zero"], ["nothing"]),
                  helper.make_node("Add", ["fast", "nothing"], [OUTPUT])]
        weights += [*more, numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "slow_shape"),
                    numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    data = _model(nodes, weights, OUTPUT, ["batch", CELLS, FIELDS], MODEL)
    return data[: len(data) // 2] if variant is DetectorVariant.CORRUPT else data


# --- scoring outside Triton ---------------------------------------------------------------

def run_pipeline(network: bytes, frames: np.ndarray) -> dict[str, np.ndarray]:
    """What the ensemble answers for ``frames`` (uint8 [N, H, W, 3]) with ``network`` (model.onnx bytes) as
    its ``detector``, computed in-process: the steps' own pre-processing and NMS around onnxruntime."""
    raw = _run(_session(network), preprocess(frames), batch=8)
    return postprocess(raw, SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS)


def golden_outputs(variant: DetectorVariant, frames: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ensemble's outputs for ``frames`` (default: the golden set) with ``variant`` serving, in-process."""
    if variant in (DetectorVariant.FAILING, DetectorVariant.CORRUPT):
        why = "its runner answers errors" if variant is DetectorVariant.FAILING else "it does not load"
        raise ValueError(f"the {variant.value} variant has no outputs: {why}")
    return run_pipeline(build_onnx(variant), golden_frames() if frames is None else frames)


def golden_score(outputs: Mapping[str, np.ndarray]) -> MapReport:
    """mAP of the ensemble's outputs (BOXES, SCORES, CLASSES, COUNT) for the golden frames, in order."""
    frames, truth = golden_set()
    return mean_average_precision(decode(outputs), truths_from_table(truth, len(frames)))


def golden_map(variant: DetectorVariant) -> MapReport:
    """mAP@0.5 and mAP@0.5:0.95 of ``variant`` on the golden set, computed outside Triton."""
    return golden_score(golden_outputs(variant))


def golden_metrics(variant: DetectorVariant) -> dict[str, float]:
    """What a verification records: {"map50": ..., "map50_95": ...}."""
    report = golden_map(variant)
    return {"map50": report.map50, "map50_95": report.map50_95}


# --- configs and packages -----------------------------------------------------------------

def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


CONFIG = f"""# Sample detector network served on CPU through the python backend (onnxruntime).
# Clients call the "{ENSEMBLE}" ensemble ({PRE} -> {MODEL} -> {NMS}), not this model.
# On a Jetson the same network runs as a TensorRT plan: see triton_configs/jetson/.
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "{INPUT}", data_type: TYPE_FP32, dims: [ {_dims(SHAPE)} ] }}
]
output [
  {{ name: "{OUTPUT}", data_type: TYPE_FP32, dims: [ {CELLS}, {FIELDS} ] }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
# Managed by the orchestrator: the highest listed version serves, the rest are
# verified fallbacks kept loaded for an instant rollback.
version_policy: {{ specific: {{ versions: [ 1 ] }} }}
"""

PRE_CONFIG = f"""# Pre-processing step of the "{ENSEMBLE}" ensemble: camera frame (uint8 HWC) -> the detector's input
# (float32 CHW, normalised). Not managed by the orchestrator: one version, shipped with the sample.
name: "{PRE}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "{IMAGE}", data_type: TYPE_UINT8, dims: [ {HEIGHT}, {WIDTH}, 3 ] }}
]
output [
  {{ name: "{INPUT}", data_type: TYPE_FP32, dims: [ {_dims(SHAPE)} ] }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""

NMS_CONFIG = f"""# Post-processing step of the "{ENSEMBLE}" ensemble: the detector's dense head -> at most
# {MAX_DETECTIONS} boxes per frame after per-class NMS (rows past COUNT are zeros; a NaN score is kept, never hidden).
# Not managed by the orchestrator: one version, shipped with the sample.
name: "{NMS}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "{OUTPUT}", data_type: TYPE_FP32, dims: [ {CELLS}, {FIELDS} ] }}
]
output [
  {{ name: "BOXES", data_type: TYPE_FP32, dims: [ {MAX_DETECTIONS}, 4 ] }},
  {{ name: "SCORES", data_type: TYPE_FP32, dims: [ {MAX_DETECTIONS} ] }},
  {{ name: "CLASSES", data_type: TYPE_INT32, dims: [ {MAX_DETECTIONS} ] }},
  {{ name: "COUNT", data_type: TYPE_INT32, dims: [ 1 ] }}
]
parameters [
  {{ key: "score_threshold", value: {{ string_value: "{SCORE_THRESHOLD}" }} }},
  {{ key: "iou_threshold", value: {{ string_value: "{IOU_THRESHOLD}" }} }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""

ENSEMBLE_CONFIG = f"""# What clients call: camera frames in, detections out. Every step names model_version -1 (Triton's
# default routing: the highest READY version), so traffic follows the version of "{MODEL}" that the
# orchestrator serves, through promotions and rollbacks, with no failed request.
name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: 8
input [
  {{ name: "{IMAGE}", data_type: TYPE_UINT8, dims: [ {HEIGHT}, {WIDTH}, 3 ] }}
]
output [
  {{ name: "BOXES", data_type: TYPE_FP32, dims: [ {MAX_DETECTIONS}, 4 ] }},
  {{ name: "SCORES", data_type: TYPE_FP32, dims: [ {MAX_DETECTIONS} ] }},
  {{ name: "CLASSES", data_type: TYPE_INT32, dims: [ {MAX_DETECTIONS} ] }},
  {{ name: "COUNT", data_type: TYPE_INT32, dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{PRE}"
      model_version: -1
      input_map {{ key: "{IMAGE}" value: "{IMAGE}" }}
      output_map {{ key: "{INPUT}" value: "frame" }}
    }},
    {{
      model_name: "{MODEL}"
      model_version: -1
      input_map {{ key: "{INPUT}" value: "frame" }}
      output_map {{ key: "{OUTPUT}" value: "head" }}
    }},
    {{
      model_name: "{NMS}"
      model_version: -1
      input_map {{ key: "{OUTPUT}" value: "head" }}
      output_map {{ key: "BOXES" value: "BOXES" }}
      output_map {{ key: "SCORES" value: "SCORES" }}
      output_map {{ key: "CLASSES" value: "CLASSES" }}
      output_map {{ key: "COUNT" value: "COUNT" }}
    }}
  ]
}}
"""

ENSEMBLE_KEEP = "README"  # an ensemble needs a version folder; git keeps no empty folder
ENSEMBLE_NOTE = f"An ensemble has no files of its own: its steps are {', '.join(STEPS)}.\n"


def write_steps(root: Path) -> None:
    """The ensemble and its two python steps (not managed: one version each) into the repository ``root``."""
    for name, config, runner in ((PRE, PRE_CONFIG, PRE_RUNNER), (NMS, NMS_CONFIG, NMS_RUNNER)):
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
        (version / "model.py").write_bytes(runner.read_bytes())
        (version / OPS.name).write_bytes(OPS.read_bytes())
    # Replay's recorder, imported by detector_pre's model.py when `orchestrate replay enable` turns it on.
    (root / PRE / "1" / RING.name).write_bytes(RING.read_bytes())
    (root / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    (root / ENSEMBLE / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    (root / ENSEMBLE / "1" / ENSEMBLE_KEEP).write_text(ENSEMBLE_NOTE)


def package_meta(variant: DetectorVariant, created_at: str, version: int | None = None) -> VersionMeta:
    return VersionMeta(
        model=MODEL,
        version=version,
        artifacts={},
        contract=CONTRACT,
        framework={"name": "onnx", "opset": "17", "ir_version": "8", "runtime": "onnxruntime"},
        target_device="cpu",
        source=f"orchestrator.sample.detector variant={variant.value}",
        created_at=created_at,
    )


FAULTS = ("nan", "empty", "shifted", "confused", "errors", "slow")


def _fault_file(mode: str, after_requests: int, mark: Path | None) -> bytes:
    fault = {"mode": mode, "after_requests": after_requests, "mark": str(mark) if mark else None}
    return json.dumps(fault, sort_keys=True).encode()


def write_detector_package(dest: Path, variant: DetectorVariant, created_at: str = SEED_TIME) -> Path:
    """A package of ``variant`` (model.onnx, model.py, meta.yaml), for ``orchestrate import``."""
    if variant is DetectorVariant.FAILING:
        files = {"model.onnx": build_onnx(DetectorVariant.BETTER), "model.py": FAULTY_RUNNER.read_bytes(),
                 "fault.json": _fault_file("errors", 0, None)}
    else:
        files = {"model.onnx": build_onnx(variant), "model.py": RUNNER.read_bytes()}
    return write_package(dest, package_meta(variant, created_at), files)


def write_faulty_detector_package(dest: Path, mode: str, after_requests: int, mark: Path | None = None) -> Path:
    """A good detector version that turns bad after ``after_requests`` requests in production (tests, benchmarks)."""
    if mode not in FAULTS:
        raise ValueError(f"unknown fault {mode!r}; one of {', '.join(FAULTS)}")
    files = {"model.onnx": build_onnx(DetectorVariant.BETTER), "model.py": FAULTY_RUNNER.read_bytes(),
             "fault.json": _fault_file(mode, after_requests, mark)}
    meta = replace(package_meta(DetectorVariant.BETTER, now_iso()), source=f"orchestrator.sample.detector fault={mode}")
    return write_package(dest, meta, files)
