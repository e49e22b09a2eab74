"""ONNX -> TensorRT plan, written as a package that ``orchestrate import`` accepts.

Runs on the machine that will serve the plan (a plan loads only on the TensorRT release
and GPU it was built with), so ``tensorrt`` is imported lazily: it exists only on GPU
machines (JetPack ships it). The model's ``config.pbtxt`` is the contract: the engine's
inputs and outputs must match it, and its optimization profile must cover the config's
``max_batch_size``, or Triton would refuse the plan at load time.

The GPU name and compute capability come from the CUDA driver (``libcuda``), which every
machine with an NVIDIA driver has, Jetson included; ``nvidia-smi`` is not on every Jetson.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from orchestrator.errors import EngineBuildError, OrchestratorError
from orchestrator.store.metafile import Contract, TensorSpec, VersionMeta, sha256_file
from orchestrator.store.modelconfig import ConfigError, ModelConfig, contract, read_config
from orchestrator.delivery.package import contract_mismatch, write_package
from orchestrator.delivery.plan_compat import PLAN_FILE

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
# TensorRT's DataType names -> Triton's datatype names (meta.yaml and config.pbtxt use Triton's).
TRT_TO_TRITON = {"FLOAT": "FP32", "HALF": "FP16", "BF16": "BF16", "INT8": "INT8", "INT32": "INT32",
                 "INT64": "INT64", "BOOL": "BOOL", "UINT8": "UINT8", "FP8": "FP8"}
_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76  # CUdevice_attribute values in cuda.h


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class BuildRequest:
    onnx: Path
    config: ModelConfig
    out: Path
    fp16: bool = False
    workspace_mb: int | None = None
    shapes: dict[str, ShapeRange] = field(default_factory=dict)  # explicit --min/--opt/--max, per input
    target_device: str | None = None  # default: the GPU's name


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.7"


@dataclass(frozen=True)
class BuiltPlan:
    plan: bytes
    tensorrt_version: str
    io: dict[str, tuple[bool, str, Shape]]  # name -> (is input, Triton datatype, engine shape with -1)


# --- pure parts: arguments, profiles, contract, meta ------------------------------------

def parse_shape(text: str) -> Shape:
    """``"8x3x16x16"`` -> ``(8, 3, 16, 16)``."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise EngineBuildError(f"shape {text!r} is not like 8x3x16x16") from exc
    if not dims or any(d < 1 for d in dims):
        raise EngineBuildError(f"shape {text!r} needs positive dimensions")
    return dims


def parse_named_shapes(items: list[str], flag: str) -> dict[str, Shape]:
    """``["IMAGE:1x3x16x16"]`` -> ``{"IMAGE": (1, 3, 16, 16)}``."""
    shapes: dict[str, Shape] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise EngineBuildError(f"{flag} {item!r} must be INPUT:DIMS, like IMAGE:8x3x16x16")
        if name in shapes:
            raise EngineBuildError(f"{flag} names input {name!r} twice")
        shapes[name] = parse_shape(dims)
    return shapes


def shape_ranges(mins: dict[str, Shape], opts: dict[str, Shape], maxes: dict[str, Shape]) -> dict[str, ShapeRange]:
    """One range per input named in any of the three flags; each needs all three, ordered min <= opt <= max."""
    ranges = {}
    for name in sorted(set(mins) | set(opts) | set(maxes)):
        missing = [flag for flag, given in (("--min", mins), ("--opt", opts), ("--max", maxes)) if name not in given]
        if missing:
            raise EngineBuildError(f"input {name!r} needs {', '.join(missing)} as well")
        low, mid, high = mins[name], opts[name], maxes[name]
        if not len(low) == len(mid) == len(high):
            raise EngineBuildError(f"input {name!r}: --min, --opt and --max have different ranks")
        if any(not a <= b <= c for a, b, c in zip(low, mid, high, strict=True)):
            raise EngineBuildError(f"input {name!r}: each dimension needs min <= opt <= max")
        ranges[name] = ShapeRange(low, mid, high)
    return ranges


def _fits(shape: Shape, shapes: ShapeRange) -> bool:
    """Same rank, and every fixed network dimension kept by min, opt and max."""
    return all(len(bound) == len(shape) and all(fixed in (-1, size) for fixed, size in zip(shape, bound, strict=True))
               for bound in (shapes.min, shapes.opt, shapes.max))


def resolve_profiles(config: ModelConfig, network_inputs: dict[str, Shape],
                     explicit: dict[str, ShapeRange]) -> dict[str, ShapeRange]:
    """The profile for every input with a dynamic (-1) dimension.

    Without an explicit range, a batched model gets batch 1..max_batch_size (optimized for
    the largest) and the config's dims for the rest: the shapes Triton will send.
    """
    unknown = sorted(set(explicit) - set(network_inputs))
    if unknown:
        raise EngineBuildError(f"shapes given for {', '.join(unknown)}, which the network does not take "
                               f"(inputs: {', '.join(sorted(network_inputs))})")
    dims = {t.name: tuple(t.dims) for t in config.input}
    profiles: dict[str, ShapeRange] = {}
    for name, shape in network_inputs.items():
        if name in explicit:
            chosen = explicit[name]
        elif -1 not in shape:
            if config.max_batch_size > 0 and shape and shape[0] < config.max_batch_size:
                raise EngineBuildError(f"input {name!r} has a fixed batch of {shape[0]} but the config's "
                                       f"max_batch_size is {config.max_batch_size}: export the ONNX with a "
                                       f"dynamic first dimension")
            continue
        elif config.max_batch_size > 0 and name in dims and -1 not in shape[1:]:
            chosen = ShapeRange((1, *shape[1:]), (config.max_batch_size, *shape[1:]),
                                (config.max_batch_size, *shape[1:]))
        elif config.max_batch_size > 0 and name in dims and -1 not in dims[name]:
            full = dims[name]
            chosen = ShapeRange((1, *full), (config.max_batch_size, *full), (config.max_batch_size, *full))
        else:
            raise EngineBuildError(f"input {name!r} has dynamic dimensions {list(shape)}: give --min, --opt and "
                                   f"--max for it")
        if not _fits(shape, chosen):
            raise EngineBuildError(f"input {name!r}: range {list(chosen.min)}..{list(chosen.max)} does not fit the "
                                   f"network's shape {list(shape)}")
        profiles[name] = chosen
    if config.max_batch_size > 0:
        for name, chosen in profiles.items():
            if chosen.max[0] < config.max_batch_size:
                raise EngineBuildError(f"input {name!r}: the profile's largest batch {chosen.max[0]} is below the "
                                       f"config's max_batch_size {config.max_batch_size}; Triton would refuse "
                                       f"the plan")
    return profiles


def engine_contract(config: ModelConfig, io: dict[str, tuple[bool, str, Shape]]) -> Contract:
    """The engine's contract in config terms (batch dimension dropped when the model batches)."""
    batched = config.max_batch_size > 0
    inputs, outputs = [], []
    for name, (is_input, datatype, shape) in io.items():
        dims = shape[1:] if batched else shape
        (inputs if is_input else outputs).append(TensorSpec(name, datatype, tuple(dims)))
    return Contract(tuple(inputs), tuple(outputs))


def check_contract(config: ModelConfig, io: dict[str, tuple[bool, str, Shape]]) -> Contract:
    """The config's contract, once the engine is shown to serve it."""
    wanted = contract(config)
    offered = engine_contract(config, io)
    mismatch = contract_mismatch(offered, wanted)
    if mismatch:
        raise EngineBuildError(f"the engine does not serve the model's config: {mismatch}")
    return wanted


def version_meta(config: ModelConfig, built: BuiltPlan, request: BuildRequest, gpu: Gpu, onnx_sha256: str,
                 profiles: dict[str, ShapeRange], created_at: str | None = None) -> VersionMeta:
    return VersionMeta(
        model=config.name,
        version=None,  # the repository numbers it at import
        artifacts={},
        contract=check_contract(config, built.io),
        framework={"name": "tensorrt", "version": built.tensorrt_version},
        target_device=request.target_device or gpu.name,
        source=f"{request.onnx.name} via scripts/build_engine",
        created_at=created_at or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"tensorrt": {
            "version": built.tensorrt_version,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "precision": "fp16" if request.fp16 else "fp32",
            "workspace_mb": request.workspace_mb,
            "profiles": {name: r.as_dict() for name, r in sorted(profiles.items())},
            "onnx": {"file": request.onnx.name, "sha256": onnx_sha256},
        }},
    )


# --- the machine: CUDA driver and TensorRT ----------------------------------------------

def load_tensorrt() -> ModuleType:
    try:
        import tensorrt  # noqa: PLC0415 - GPU machines only
    except ImportError as exc:
        raise EngineBuildError("the tensorrt Python package is not installed: build on the device (JetPack ships "
                               "it) or on a GPU machine with `pip install tensorrt`") from exc
    return tensorrt


def detect_gpu(device: int = 0) -> Gpu:
    """Name and compute capability of ``device`` from the CUDA driver API."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise EngineBuildError("no NVIDIA driver (libcuda.so.1) on this machine: a plan must be built on the GPU "
                               "that serves it") from exc

    def call(result: int, what: str) -> None:
        if result != 0:
            raise EngineBuildError(f"CUDA driver call {what} failed with error {result}")

    handle, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    call(cuda.cuInit(0), "cuInit")
    call(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    call(cuda.cuDeviceGetName(name, len(name), handle), "cuDeviceGetName")
    call(cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, handle), "cuDeviceGetAttribute")
    call(cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, handle), "cuDeviceGetAttribute")
    return Gpu(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}")


def engine_io(trt: ModuleType, plan: bytes, logger: Any) -> dict[str, tuple[bool, str, Shape]]:
    """The I/O tensors of a plan, read back by deserializing it (which also proves it loads here)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the built plan does not deserialize on this machine")
    io = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in TRT_TO_TRITON:
            raise EngineBuildError(f"tensor {name!r} has TensorRT type {dtype}, which Triton has no name for")
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        io[name] = (is_input, TRT_TO_TRITON[dtype], tuple(engine.get_tensor_shape(name)))
    return io


def build_plan(trt: ModuleType, request: BuildRequest,
               verbose: bool = False) -> tuple[BuiltPlan, dict[str, ShapeRange]]:
    # TensorRT's own logger writes to stderr: its parse and build messages explain a failure best.
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.onnx)):
        reasons = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors)) or "unknown"
        raise EngineBuildError(f"TensorRT cannot parse {request.onnx.name}: {reasons}")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profiles = resolve_profiles(request.config, inputs, request.shapes)

    settings = builder.create_builder_config()
    if request.workspace_mb is not None:
        settings.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    if request.fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; building FP16 anyway as asked")
        settings.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default on Ampere and later (Orin included): without this an "fp32" plan
        # would carry 10-bit mantissas in its convolutions and matrix products.
        settings.clear_flag(trt.BuilderFlag.TF32)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in profiles.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        settings.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, settings)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {request.onnx.name} (its log above says why)")
    plan = bytes(serialized)
    return BuiltPlan(plan, trt.__version__, engine_io(trt, plan, logger)), profiles


def build_package(request: BuildRequest, trt: ModuleType | None = None, gpu: Gpu | None = None,
                  verbose: bool = False) -> Path:
    """Build the plan and write ``model.plan`` + ``meta.yaml`` into ``request.out``."""
    if not request.onnx.is_file():
        raise EngineBuildError(f"no ONNX file at {request.onnx}")
    if request.out.exists() and any(request.out.iterdir()):
        raise EngineBuildError(f"{request.out} is not empty: a package folder holds only the plan and its meta")
    trt = trt or load_tensorrt()
    gpu = gpu or detect_gpu()
    built, profiles = build_plan(trt, request, verbose)
    meta = version_meta(request.config, built, request, gpu, sha256_file(request.onnx), profiles)
    return write_package(request.out, meta, {PLAN_FILE: built.plan})


# --- command line (scripts/build_engine) ------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_engine", description="Build a TensorRT plan from an ONNX file, as a package for "
        "`orchestrate import`. Run it on the device that will serve the plan.")
    parser.add_argument("onnx", type=Path, help="the ONNX network")
    parser.add_argument("--config", type=Path, required=True,
                        help="the model's config.pbtxt (e.g. triton_configs/jetson/classifier/config.pbtxt)")
    parser.add_argument("--out", type=Path, required=True, help="package folder to write (new or empty)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--workspace-mb", type=int, help="builder workspace limit in MiB")
    for bound in ("min", "opt", "max"):
        parser.add_argument(f"--{bound}", action="append", default=[], metavar="INPUT:DIMS",
                            help=f"{bound} shape of a dynamic input, e.g. IMAGE:8x3x16x16 (repeat per input)")
    parser.add_argument("--target-device", help="meta.yaml's target_device (default: the GPU's name)")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.workspace_mb is not None and args.workspace_mb < 1:
            raise EngineBuildError("--workspace-mb must be positive")
        try:
            _, config = read_config(args.config)
        except ConfigError as exc:
            raise EngineBuildError(f"config {args.config}: {exc}") from exc
        shapes = shape_ranges(parse_named_shapes(args.min, "--min"), parse_named_shapes(args.opt, "--opt"),
                              parse_named_shapes(args.max, "--max"))
        request = BuildRequest(onnx=args.onnx, config=config, out=args.out, fp16=args.fp16,
                               workspace_mb=args.workspace_mb, shapes=shapes, target_device=args.target_device)
        folder = build_package(request, verbose=args.verbose)
    except OrchestratorError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return exc.exit_code
    print(f"{config.name}: plan package written to {folder} (import it with `orchestrate import {folder}`)")
    return 0
