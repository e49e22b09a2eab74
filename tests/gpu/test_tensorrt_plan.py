"""The sample network built into a real TensorRT plan, run on the GPU, compared with onnxruntime.

Skipped unless the `tensorrt` package imports and the CUDA driver finds a GPU (a Jetson,
or any NVIDIA machine). Device memory goes through the CUDA driver API with ctypes, so
nothing beyond TensorRT, onnxruntime and the driver is needed.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orchestrator.build.engine import BuildRequest, Gpu, build_package, detect_gpu
from orchestrator.delivery.package import verify_package
from orchestrator.delivery.plan_compat import PLAN_FILE, check_plan, parse_release, read_plan_header
from orchestrator.errors import EngineBuildError
from orchestrator.sample import INPUT, OUTPUT, Variant, build_onnx, golden_set
from orchestrator.store.metafile import META_FILE, read_meta
from orchestrator.store.modelconfig import parse_config

ROOT = Path(__file__).resolve().parents[2]
JETSON_CONFIG = ROOT / "triton_configs" / "jetson" / "classifier" / "config.pbtxt"


def _gpu_or_reason() -> tuple[ModuleType | None, Gpu | None, str]:
    try:
        import tensorrt  # noqa: PLC0415 - GPU machines only
    except ImportError:
        return None, None, "the tensorrt package is not installed"
    try:
        return tensorrt, detect_gpu(), ""
    except EngineBuildError as exc:
        return None, None, str(exc)


TRT, GPU, WHY_NOT = _gpu_or_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(TRT is None, reason=f"needs TensorRT and a GPU: {WHY_NOT}")]


class Device:
    """Just enough of the CUDA driver API to feed an engine: the primary context, alloc, copy, free."""

    def __init__(self) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        device, context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.cuda.cuInit(0))
        self._check(self.cuda.cuDeviceGet(ctypes.byref(device), 0))
        # TensorRT uses the runtime API, which works in the primary context: share it.
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device))
        self._check(self.cuda.cuCtxSetCurrent(context))
        self.device = device

    @staticmethod
    def _check(result: int) -> None:
        assert result == 0, f"CUDA driver error {result}"

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self._check(self.cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))))
        return pointer.value

    def upload(self, pointer: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array)
        self._check(self.cuda.cuMemcpyHtoD_v2(ctypes.c_uint64(pointer), data.ctypes.data_as(ctypes.c_void_p),
                                              ctypes.c_size_t(data.nbytes)))

    def download(self, pointer: int, array: np.ndarray) -> None:
        self._check(self.cuda.cuMemcpyDtoH_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(pointer),
                                              ctypes.c_size_t(array.nbytes)))

    def synchronize(self) -> None:
        self._check(self.cuda.cuCtxSynchronize())

    def free(self, pointer: int) -> None:
        self._check(self.cuda.cuMemFree_v2(ctypes.c_uint64(pointer)))

    def close(self) -> None:
        self.cuda.cuDevicePrimaryCtxRelease(self.device)


def run_plan(plan: bytes, images: np.ndarray, batch: int) -> np.ndarray:
    """LOGITS for ``images``, ``batch`` at a time, through a deserialized engine."""
    assert TRT is not None
    logger = TRT.Logger(TRT.Logger.WARNING)
    engine = TRT.Runtime(logger).deserialize_cuda_engine(plan)
    assert engine is not None, "the plan does not deserialize"
    context = engine.create_execution_context()
    device = Device()
    outputs = []
    try:
        for start in range(0, len(images), batch):
            chunk = np.ascontiguousarray(images[start:start + batch], np.float32)
            result = np.empty((len(chunk), 10), np.float32)
            pointers = [device.alloc(chunk.nbytes), device.alloc(result.nbytes)]
            try:
                device.upload(pointers[0], chunk)
                assert context.set_input_shape(INPUT, chunk.shape)
                context.set_tensor_address(INPUT, pointers[0])
                context.set_tensor_address(OUTPUT, pointers[1])
                assert context.execute_async_v3(0), "enqueue failed"
                device.synchronize()
                device.download(pointers[1], result)
            finally:
                for pointer in pointers:
                    device.free(pointer)
            outputs.append(result)
    finally:
        del context, engine
        device.close()
    return np.concatenate(outputs)


def onnxruntime_logits(images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(build_onnx(Variant.BETTER), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images})[0]


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "fp16"])
def package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("plan")
    onnx = tmp / "classifier.onnx"
    onnx.write_bytes(build_onnx(Variant.BETTER))
    build = BuildRequest(onnx=onnx, config=parse_config(JETSON_CONFIG.read_text()), out=tmp / "package",
                         fp16=request.param, workspace_mb=256)
    return build_package(build, trt=TRT, gpu=GPU)


def test_the_package_imports_against_the_jetson_config(package: Path) -> None:
    meta = verify_package(package, str(package), "classifier", parse_config(JETSON_CONFIG.read_text()))
    assert sorted(p.name for p in package.iterdir()) == [META_FILE, PLAN_FILE]
    assert TRT is not None and GPU is not None
    block: dict[str, Any] = meta.extra["tensorrt"]
    assert meta.framework == {"name": "tensorrt", "version": TRT.__version__}
    assert block["compute_capability"] == GPU.compute_capability and block["gpu"] == GPU.name
    assert block["profiles"]["IMAGE"]["max"][0] == 8


def test_the_header_layout_holds_for_a_real_plan(package: Path) -> None:
    """plan_compat's byte layout came from trtexec's source; this is where it meets a real plan."""
    assert TRT is not None and GPU is not None
    header = read_plan_header(package / PLAN_FILE)
    assert header.version is not None, f"unknown serialization layout {header.layout}"
    runtime = parse_release(TRT.__version__)
    assert header.version[:len(runtime)] == runtime[:4]
    meta = read_meta(package / META_FILE)
    assert check_plan(meta, package / PLAN_FILE, TRT.__version__, GPU.compute_capability) is None
    other = f"{runtime[0] + 1}.0.0"
    assert check_plan(meta, package / PLAN_FILE, other, GPU.compute_capability) is not None


def test_the_plan_answers_the_golden_set_like_onnxruntime(package: Path) -> None:
    meta = read_meta(package / META_FILE)
    fp16 = meta.extra["tensorrt"]["precision"] == "fp16"
    images, labels = golden_set()
    expected = onnxruntime_logits(images)
    got = run_plan((package / PLAN_FILE).read_bytes(), images, batch=8)
    scale = float(np.abs(expected).max())
    # FP16 keeps about 3 significant digits; an FP32 plan (TF32 off, see engine.py) differs from
    # onnxruntime only in summation order.
    tolerance = 2e-2 * scale if fp16 else 1e-4 * scale
    assert np.abs(got - expected).max() <= tolerance
    agreement = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    assert agreement >= (0.97 if fp16 else 0.99)
    accuracy = float((got.argmax(axis=1) == labels).mean())
    assert abs(accuracy - float((expected.argmax(axis=1) == labels).mean())) <= (0.03 if fp16 else 0.01)
