"""A small, real image classifier for the sample repository, the demo and the tests.

ONNX network: Conv(3->4, 3x3, stride 2) -> Relu -> Flatten -> Gemm(256->10) -> LOGITS.
The convolution is a fixed random feature extractor; the Gemm is fitted by ridge
regression on synthetic images of 10 classes (a class prototype plus noise). Everything
is derived from fixed seeds and rounded, so the files are byte-for-byte reproducible.

Variants reproduce what goes wrong with real model updates: a NaN-emitting engine, an
all-zero head, exploding activations, a head with swapped classes (worse accuracy), and
a corrupt file that does not load.
"""

from __future__ import annotations

import enum
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchestrator.core.journal import now_iso
from orchestrator.delivery.package import write_package
from orchestrator.store.metafile import Contract, TensorSpec, VersionMeta

MODEL = "classifier"
CLASSES = 10
SHAPE = (3, 16, 16)
FEATURES = 4 * 8 * 8
INPUT, OUTPUT = "IMAGE", "LOGITS"
CONTRACT = Contract(
    inputs=(TensorSpec(INPUT, "FP32", SHAPE),),
    outputs=(TensorSpec(OUTPUT, "FP32", (CLASSES,)),),
)
RUNNER = Path(__file__).with_name("model.py")
SEED_TIME = "2026-11-21T00:00:00+00:00"
GOLDEN_SIZE = 100
NOISE = 0.9


class Variant(str, enum.Enum):
    BASELINE = "baseline"  # fitted on few samples: version 1 in the sample repository
    BETTER = "better"  # fitted on many samples: the upgrade the demo promotes
    NAN = "nan"
    ZEROS = "zeros"
    EXPLODING = "exploding"
    WORSE = "worse"  # classes swapped: loads and runs, scores badly
    CORRUPT = "corrupt"  # truncated network file: Triton cannot load it


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _conv_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(0)
    return np.round(rng.normal(0, 0.5, (4, 3, 3, 3)), 3).astype(np.float32), np.zeros(4, np.float32)


def _prototypes() -> np.ndarray:
    return _rng(1).uniform(0, 1, (CLASSES, *SHAPE)).astype(np.float32)


def sample_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy images of random classes, and their labels."""
    rng = _rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = _prototypes()[labels] + rng.normal(0, NOISE, (count, *SHAPE))
    return images.astype(np.float32), labels.astype(np.int64)


def golden_set() -> tuple[np.ndarray, np.ndarray]:
    return sample_images(GOLDEN_SIZE, seed=7)


def _features(images: np.ndarray) -> np.ndarray:
    """Conv(stride 2, pad 1) + Relu + Flatten in numpy, matching the ONNX graph."""
    weight, _ = _conv_weights()
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((images.shape[0], 4, 8, 8), np.float32)
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, :, dy:dy + 16:2, dx:dx + 16:2]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, dy, dx])
    return np.maximum(out, 0).reshape(images.shape[0], FEATURES)


def _fit_head(samples: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = sample_images(samples, seed=3)
    feats = np.hstack([_features(images), np.ones((samples, 1), np.float32)]).astype(np.float64)
    targets = np.eye(CLASSES)[labels]
    solution = np.linalg.solve(feats.T @ feats + 10.0 * np.eye(FEATURES + 1), feats.T @ targets)
    # Rounding hides last-bit differences between BLAS builds: same bytes on every machine.
    return np.round(solution[:-1].T, 4).astype(np.float32), np.round(solution[-1], 4).astype(np.float32)


def build_onnx(variant: Variant) -> bytes:
    weight, bias = _fit_head(60 if variant is Variant.BASELINE else 2000)
    if variant is Variant.NAN:
        weight = weight.copy()
        weight[:, 0] = np.nan
    elif variant is Variant.ZEROS:
        weight, bias = np.zeros_like(weight), np.zeros_like(bias)
    elif variant is Variant.EXPLODING:
        weight, bias = weight * np.float32(1e9), bias * np.float32(1e9)
    elif variant is Variant.WORSE:
        weight, bias = np.roll(weight, 3, axis=0), np.roll(bias, 3)
    conv_w, conv_b = _conv_weights()
    graph = helper.make_graph(
        [
            helper.make_node("Conv", [INPUT, "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "head_w", "head_b"], [OUTPUT], transB=1),
        ],
        "classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(weight, "head_w"),
            numpy_helper.from_array(bias, "head_b"),
        ],
    )
    model = helper.make_model(graph, producer_name="triton-orchestrator-sample",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString(deterministic=True)
    return data[: len(data) // 2] if variant is Variant.CORRUPT else data


CONFIG = f"""# Sample classifier served on CPU through the python backend (onnxruntime).
# On a Jetson the same network runs as a TensorRT plan: see triton_configs/jetson/.
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "{INPUT}", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] }}
]
output [
  {{ name: "{OUTPUT}", data_type: TYPE_FP32, dims: [ {CLASSES} ] }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
# Managed by the orchestrator: the highest listed version serves, the rest are
# verified fallbacks kept loaded for an instant rollback.
version_policy: {{ specific: {{ versions: [ 1 ] }} }}
"""


def package_meta(variant: Variant, created_at: str, version: int | None = None) -> VersionMeta:
    return VersionMeta(
        model=MODEL,
        version=version,
        artifacts={},
        contract=CONTRACT,
        framework={"name": "onnx", "opset": "17", "ir_version": "8", "runtime": "onnxruntime"},
        target_device="cpu",
        source=f"orchestrator.sample variant={variant.value}",
        created_at=created_at,
    )


def write_sample_package(dest: Path, variant: Variant, created_at: str = SEED_TIME) -> Path:
    files = {"model.onnx": build_onnx(variant), "model.py": RUNNER.read_bytes()}
    return write_package(dest, package_meta(variant, created_at), files)


FAULTY_RUNNER = Path(__file__).with_name("faulty_model.py")
# The environment variable a device's backend process reads its hardware from (fault.json "only_on").
HARDWARE_ENV = "ORCH_SAMPLE_HARDWARE"
FAULTS = ("nan", "zeros", "exploding", "divergent", "slow", "errors", "crash", "drift")


def write_faulty_package(dest: Path, mode: str, after_requests: int, mark: Path | None = None,
                         only_on_hardware: tuple[str, ...] = ()) -> Path:
    """A good version that turns bad after ``after_requests`` requests in production (tests, benchmarks).

    With ``only_on_hardware``, bad only where the backend's ``ORCH_SAMPLE_HARDWARE`` is one of those
    values (a TensorRT plan built for another platform); good everywhere else.
    """
    if mode not in FAULTS:
        raise ValueError(f"unknown fault {mode!r}; one of {', '.join(FAULTS)}")
    fault: dict[str, object] = {"mode": mode, "after_requests": after_requests, "mark": str(mark) if mark else None}
    if only_on_hardware:
        fault["only_on"] = {"env": HARDWARE_ENV, "values": list(only_on_hardware)}
    files = {"model.onnx": build_onnx(Variant.BETTER), "model.py": FAULTY_RUNNER.read_bytes(),
             "fault.json": json.dumps(fault, sort_keys=True).encode()}
    where = f" only_on={','.join(only_on_hardware)}" if only_on_hardware else ""
    meta = replace(package_meta(Variant.BETTER, now_iso()), source=f"orchestrator.sample fault={mode}{where}")
    return write_package(dest, meta, files)


def golden_accuracy(variant: Variant) -> float:
    """Top-1 accuracy of ``variant`` on the golden set, computed with onnxruntime outside Triton."""
    import onnxruntime as ort  # noqa: PLC0415 - only the sample tooling needs it

    session = ort.InferenceSession(build_onnx(variant), providers=["CPUExecutionProvider"])
    inputs, labels = golden_set()
    logits = session.run([OUTPUT], {INPUT: inputs})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def save_golden(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inputs, labels = golden_set()
    np.save(folder / "inputs.npy", inputs)
    np.save(folder / "labels.npy", labels)
