"""Will this TensorRT plan load here? Answered from its header and ``meta.yaml``, before Triton sees it.

A plan deserializes only on the TensorRT release and the GPU architecture it was built
for; Triton reports a mismatch late and vaguely ("unable to create TensorRT engine").

Header layout (from NVIDIA's ``trtexec --getPlanVersionOnly`` source, serialization
layout 0; not measured here, where no TensorRT exists; ``tests/gpu`` checks it against
a freshly built plan):

    bytes 0-3    uint32 little-endian 0x74727466, i.e. the ASCII bytes "ftrt"
    bytes 4-7    uint32 little-endian serialization layout; only 0 is understood
    bytes 24-27  TensorRT major, minor, patch, build, one byte each

The plan does not record the GPU, so the compute capability comes from ``meta.yaml``
(``scripts/build_engine`` writes it into the ``tensorrt`` block). A fact that cannot be
read (an unknown header layout, a meta without the field, a runtime the caller does not
know) refuses nothing: Triton's own load check stays the backstop. A fact that is known
and differs always refuses.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.model import VersionMeta
from orchestrator.settings import Settings
from orchestrator.store.modelconfig import ModelConfig, primary_file

PLAN_FILE = "model.plan"
PLAN_TAG = b"ftrt"
HEADER_SIZE = 28
_LAYOUT_OFFSET = 4
_VERSION_OFFSET = 24
KNOWN_LAYOUTS = frozenset({0})
# Releases that differ only in the build number share a serialization format (same x.y.z).
_SIGNIFICANT_PARTS = 3


class PlanHeaderError(ValueError):
    """The bytes are not a TensorRT plan."""


@dataclass(frozen=True)
class PlanHeader:
    layout: int
    version: tuple[int, ...] | None  # major, minor, patch, build; None for a layout we cannot read

    @property
    def release(self) -> str | None:
        return ".".join(str(part) for part in self.version) if self.version else None


def read_header(data: bytes) -> PlanHeader:
    """The header of a plan, from at least its first 28 bytes."""
    if data[:4] != PLAN_TAG:
        # Ultralytics exports, for one, put a JSON header before the engine: Triton cannot load those.
        raise PlanHeaderError(f"starts with {data[:4]!r}, not the {PLAN_TAG.decode()!r} tag of a TensorRT plan")
    if len(data) < HEADER_SIZE:
        raise PlanHeaderError(f"is {len(data)} bytes long, shorter than a TensorRT plan header")
    (layout,) = struct.unpack_from("<I", data, _LAYOUT_OFFSET)
    if layout not in KNOWN_LAYOUTS:
        return PlanHeader(layout, None)
    return PlanHeader(layout, tuple(data[_VERSION_OFFSET:HEADER_SIZE]))


def read_plan_header(path: Path) -> PlanHeader:
    with path.open("rb") as handle:
        return read_header(handle.read(HEADER_SIZE))


def parse_release(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; suffixes such as ``"8.6.2.3+cuda12.2"`` are ignored."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"{text!r} is not a TensorRT version")
    return tuple(int(part) for part in match.group(1).split("."))


def same_release(built: tuple[int, ...], runtime: tuple[int, ...]) -> bool:
    """True when both name the same x.y.z (as far as the shorter one says)."""
    width = min(len(built), len(runtime), _SIGNIFICANT_PARTS)
    return built[:width] == runtime[:width]


def normalize_compute_capability(text: str) -> str:
    """``"8.7"``, ``"87"``, ``"sm_87"`` and ``"sm87"`` all mean ``"8.7"``."""
    raw = str(text).strip().lower().removeprefix("sm").lstrip("_")
    if re.fullmatch(r"\d+\.\d+", raw):
        major, minor = raw.split(".")
        return f"{int(major)}.{int(minor)}"
    if re.fullmatch(r"\d{2,3}", raw):
        return f"{int(raw[:-1])}.{raw[-1]}"
    raise ValueError(f"{text!r} is not a compute capability (like 8.7 or sm_87)")


def _recorded(meta: VersionMeta) -> dict[str, object]:
    block = meta.extra.get("tensorrt")
    return block if isinstance(block, dict) else {}


def _label(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def check_plan(meta: VersionMeta, plan_path: Path, runtime_trt_version: str | None,
               runtime_compute_capability: str | None) -> str | None:
    """Why this plan must be refused on the given runtime, in one line; None when nothing known forbids it."""
    try:
        header = read_plan_header(plan_path)
    except OSError as exc:
        return f"cannot read {plan_path.name}: {exc.strerror or exc}"
    except PlanHeaderError as exc:
        return f"{plan_path.name} {exc}"
    recorded = _recorded(meta)
    try:
        meta_version = parse_release(str(recorded["version"])) if recorded.get("version") else None
        if meta_version is None and meta.framework.get("name") == "tensorrt" and meta.framework.get("version"):
            meta_version = parse_release(meta.framework["version"])
        runtime_version = parse_release(runtime_trt_version) if runtime_trt_version else None
        meta_cc = normalize_compute_capability(str(recorded["compute_capability"])) \
            if recorded.get("compute_capability") else None
        runtime_cc = normalize_compute_capability(runtime_compute_capability) if runtime_compute_capability else None
    except ValueError as exc:
        return f"meta.yaml or runtime: {exc}"
    if header.version and meta_version and not same_release(header.version, meta_version):
        return (f"meta.yaml says TensorRT {_label(meta_version)} but {plan_path.name}'s header says "
                f"{_label(header.version)}: the meta does not describe this plan")
    built = header.version or meta_version
    if built and runtime_version and not same_release(built, runtime_version):
        return (f"{plan_path.name} was built with TensorRT {_label(built)} but the server runs "
                f"{_label(runtime_version)}: rebuild it on the device with scripts/build_engine")
    if meta_cc and runtime_cc and meta_cc != runtime_cc:
        gpu = recorded.get("gpu")
        built_on = f" ({gpu})" if gpu else ""
        return (f"{plan_path.name} was built for compute capability {meta_cc}{built_on} but the server's GPU "
                f"is {runtime_cc}: rebuild it on the device with scripts/build_engine")
    return None


def plan_incompatibility(config: ModelConfig, meta: VersionMeta, folder: Path, settings: Settings) -> str | None:
    """For TensorRT models: why the plan in ``folder`` cannot load on this server (Triton must not find out)."""
    if primary_file(config) != PLAN_FILE:
        return None
    return check_plan(meta, folder / PLAN_FILE, settings.tensorrt_version, settings.compute_capability)
