"""Plan compatibility from synthetic plan headers and metas, and the pure side of scripts/build_engine.

The header bytes follow the layout documented in orchestrator/delivery/plan_compat.py; tests/gpu
checks that layout against a plan TensorRT really built.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.build.engine import (
    BuildRequest,
    BuiltPlan,
    EngineBuildError,
    Gpu,
    ShapeRange,
    parse_named_shapes,
    resolve_profiles,
    shape_ranges,
    version_meta,
)
from orchestrator.delivery.package import verify_package, write_package
from orchestrator.delivery.plan_compat import (
    PLAN_FILE,
    PlanHeaderError,
    check_plan,
    normalize_compute_capability,
    read_header,
    same_release,
)
from orchestrator.store.metafile import META_FILE, VersionMeta, parse_meta, read_meta, render_meta
from orchestrator.store.modelconfig import ModelConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
JETSON_CONFIG = ROOT / "triton_configs" / "jetson" / "classifier" / "config.pbtxt"
ORIN = Gpu("Orin", "8.7")
# What TensorRT reports for the sample network, batch dimension dynamic.
SAMPLE_IO = {"IMAGE": (True, "FP32", (-1, 3, 16, 16)), "LOGITS": (False, "FP32", (-1, 10))}


def plan_bytes(version: tuple[int, int, int, int] = (10, 3, 0, 30), layout: int = 0, tag: bytes = b"ftrt",
               body: bytes = b"\x00" * 64) -> bytes:
    header = bytearray(tag + struct.pack("<I", layout) + bytes(16) + bytes(version))
    assert len(header) == 28
    return bytes(header) + body


def jetson_config() -> ModelConfig:
    return parse_config(JETSON_CONFIG.read_text())


def plan_meta(tmp_path: Path, trt_version: str = "10.3.0.30", gpu: Gpu = ORIN,
              fp16: bool = True) -> tuple[VersionMeta, Path]:
    """A package as scripts/build_engine writes it, around a synthetic plan; returns (meta, plan path)."""
    config = jetson_config()
    onnx = tmp_path / "classifier.onnx"
    onnx.write_bytes(b"onnx")
    request = BuildRequest(onnx=onnx, config=config, out=tmp_path / "pkg", fp16=fp16, workspace_mb=512)
    profiles = resolve_profiles(config, {"IMAGE": (-1, 3, 16, 16)}, {})
    built = BuiltPlan(plan_bytes(), trt_version, SAMPLE_IO)
    meta = version_meta(config, built, request, gpu, "ab" * 32, profiles, created_at="2026-11-21T00:00:00+00:00")
    folder = write_package(request.out, meta, {PLAN_FILE: built.plan})
    return read_meta(folder / META_FILE), folder / PLAN_FILE


# --- the header ------------------------------------------------------------------------------

def test_header_gives_the_tensorrt_version_from_bytes_24_to_27() -> None:
    header = read_header(plan_bytes((8, 6, 2, 3)))
    assert header.layout == 0 and header.version == (8, 6, 2, 3) and header.release == "8.6.2.3"


def test_a_file_without_the_tag_is_not_a_plan() -> None:
    with pytest.raises(PlanHeaderError, match="ftrt"):
        read_header(b'{"author": "Ultralytics"}' + bytes(40))
    with pytest.raises(PlanHeaderError, match="ftrt"):
        read_header(struct.pack(">I", 0x74727466) + bytes(40))  # the tag is little-endian


def test_a_truncated_header_is_refused() -> None:
    with pytest.raises(PlanHeaderError, match="shorter"):
        read_header(plan_bytes()[:27])


def test_an_unknown_layout_yields_no_version_rather_than_a_wrong_one() -> None:
    header = read_header(plan_bytes((10, 3, 0, 30), layout=7))
    assert header.layout == 7 and header.version is None and header.release is None


@pytest.mark.parametrize(("text", "expected"), [("8.7", "8.7"), ("87", "8.7"), ("sm_87", "8.7"), ("SM87", "8.7"),
                                                ("10.0", "10.0"), ("100", "10.0"), ("sm_120", "12.0")])
def test_compute_capabilities_are_normalized(text: str, expected: str) -> None:
    assert normalize_compute_capability(text) == expected


def test_release_comparison_ignores_the_build_number() -> None:
    assert same_release((10, 3, 0, 30), (10, 3, 0, 26))
    assert same_release((10, 3, 0, 30), (10, 3))
    assert not same_release((10, 3, 0, 30), (10, 4, 0, 30))
    assert not same_release((8, 6, 2, 3), (8, 6, 1, 3))


# --- check_plan --------------------------------------------------------------------------------

def test_a_plan_for_this_runtime_passes(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    assert check_plan(meta, plan, "10.3.0.30", "8.7") is None
    assert check_plan(meta, plan, "10.3.0", "sm_87") is None  # tensorrt.__version__ and nvcc spellings
    assert check_plan(meta, plan, None, None) is None  # nothing known about the runtime refuses nothing


def test_another_tensorrt_release_is_refused_with_the_reason(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    reason = check_plan(meta, plan, "8.6.2.3", "8.7")
    assert reason is not None and "10.3.0.30" in reason and "8.6.2.3" in reason and "\n" not in reason
    assert check_plan(meta, plan, "10.4.0", None) is not None


def test_another_gpu_is_refused_with_the_reason(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    reason = check_plan(meta, plan, "10.3.0.30", "9.0")
    assert reason is not None and "8.7" in reason and "9.0" in reason and "Orin" in reason


def test_the_header_wins_over_a_meta_that_describes_another_plan(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path, trt_version="10.4.0.11")  # the header says 10.3.0.30
    reason = check_plan(meta, plan, "10.4.0.11", "8.7")
    assert reason is not None and "header" in reason


def test_an_unreadable_header_layout_falls_back_to_the_meta(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    plan.write_bytes(plan_bytes((0, 0, 0, 0), layout=3))
    assert check_plan(meta, plan, "10.3.0.30", "8.7") is None
    assert "8.6.2" in (check_plan(meta, plan, "8.6.2", "8.7") or "")


def test_a_meta_without_the_tensorrt_block_uses_the_framework_version(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    bare = replace(meta, extra={})
    plan.write_bytes(plan_bytes(layout=3))  # nor a readable header
    assert check_plan(bare, plan, "10.3.0", "9.0") is None  # no recorded GPU: nothing to compare
    assert check_plan(bare, plan, "10.4.0", None) is not None  # framework.version says 10.3.0.30


def test_files_that_are_not_plans_are_refused(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    plan.write_bytes(b"\x08\x07" + bytes(60))  # an ONNX file renamed
    assert "not the 'ftrt' tag" in (check_plan(meta, plan, None, None) or "")
    plan.unlink()
    assert "cannot read" in (check_plan(meta, plan, None, None) or "")


def test_nonsense_in_the_meta_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    broken = replace(meta, extra={"tensorrt": {**meta.extra["tensorrt"], "compute_capability": "orin"}})
    assert "compute capability" in (check_plan(broken, plan, None, "8.7") or "")


# --- what scripts/build_engine writes ---------------------------------------------------------

def test_build_engine_meta_round_trips_and_imports_against_the_jetson_config(tmp_path: Path) -> None:
    meta, plan = plan_meta(tmp_path)
    assert meta.framework == {"name": "tensorrt", "version": "10.3.0.30"}
    assert meta.target_device == "Orin"
    block = meta.extra["tensorrt"]
    assert block["gpu"] == "Orin" and block["compute_capability"] == "8.7" and block["precision"] == "fp16"
    assert block["profiles"] == {"IMAGE": {"min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [8, 3, 16, 16]}}
    assert block["onnx"] == {"file": "classifier.onnx", "sha256": "ab" * 32}
    assert parse_meta(render_meta(meta)) == meta
    # The device side accepts the package: checksums, the config's contract, model.plan present.
    assert verify_package(plan.parent, "pkg", "classifier", jetson_config()) == meta


def test_an_engine_whose_outputs_differ_from_the_config_is_refused(tmp_path: Path) -> None:
    config = jetson_config()
    request = BuildRequest(onnx=tmp_path / "m.onnx", config=config, out=tmp_path / "pkg")
    built = BuiltPlan(plan_bytes(), "10.3.0.30", {**SAMPLE_IO, "LOGITS": (False, "FP16", (-1, 10))})
    with pytest.raises(EngineBuildError, match="LOGITS"):
        version_meta(config, built, request, ORIN, "00" * 32, {})


def test_default_profile_covers_batch_one_to_max_batch_size() -> None:
    profiles = resolve_profiles(jetson_config(), {"IMAGE": (-1, 3, 16, 16)}, {})
    assert profiles == {"IMAGE": ShapeRange((1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))}


def test_explicit_shapes_are_checked_against_the_network_and_the_config() -> None:
    config = jetson_config()
    ranges = shape_ranges(parse_named_shapes(["IMAGE:1x3x16x16"], "--min"),
                          parse_named_shapes(["IMAGE:4x3x16x16"], "--opt"),
                          parse_named_shapes(["IMAGE:16x3x16x16"], "--max"))
    assert resolve_profiles(config, {"IMAGE": (-1, 3, 16, 16)}, ranges)["IMAGE"].max == (16, 3, 16, 16)
    small = shape_ranges({"IMAGE": (1, 3, 16, 16)}, {"IMAGE": (2, 3, 16, 16)}, {"IMAGE": (4, 3, 16, 16)})
    with pytest.raises(EngineBuildError, match="max_batch_size 8"):
        resolve_profiles(config, {"IMAGE": (-1, 3, 16, 16)}, small)
    wrong = shape_ranges({"IMAGE": (1, 3, 32, 32)}, {"IMAGE": (8, 3, 32, 32)}, {"IMAGE": (8, 3, 32, 32)})
    with pytest.raises(EngineBuildError, match="does not fit"):
        resolve_profiles(config, {"IMAGE": (-1, 3, 16, 16)}, wrong)
    with pytest.raises(EngineBuildError, match="does not take"):
        resolve_profiles(config, {"IMAGE": (-1, 3, 16, 16)}, {"PIXELS": ranges["IMAGE"]})
    with pytest.raises(EngineBuildError, match="fixed batch of 1"):
        resolve_profiles(config, {"IMAGE": (1, 3, 16, 16)}, {})


@pytest.mark.parametrize(("mins", "opts", "maxes", "match"), [
    (["IMAGE:1x3x16x16"], [], [], "--opt, --max"),
    (["IMAGE:8x3x16x16"], ["IMAGE:4x3x16x16"], ["IMAGE:8x3x16x16"], "min <= opt <= max"),
    (["IMAGE:1x3x16"], ["IMAGE:4x3x16x16"], ["IMAGE:8x3x16x16"], "ranks"),
    (["IMAGE=1x3x16x16"], [], [], "INPUT:DIMS"),
    (["IMAGE:1x3x0x16"], [], [], "positive"),
])
def test_bad_shape_flags_are_refused(mins: list[str], opts: list[str], maxes: list[str], match: str) -> None:
    with pytest.raises(EngineBuildError, match=match):
        shape_ranges(parse_named_shapes(mins, "--min"), parse_named_shapes(opts, "--opt"),
                     parse_named_shapes(maxes, "--max"))


def test_build_engine_without_tensorrt_fails_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401, PLC0415
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here: tests/gpu builds real plans")
    from orchestrator.sample import Variant, build_onnx  # noqa: PLC0415

    onnx = tmp_path / "classifier.onnx"
    onnx.write_bytes(build_onnx(Variant.BETTER))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_engine"), str(onnx), "--config",
                             str(JETSON_CONFIG), "--out", str(tmp_path / "pkg"), "--fp16"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == EngineBuildError.exit_code
    assert result.stderr.count("\n") == 1 and "tensorrt" in result.stderr
    assert not (tmp_path / "pkg").exists()


# --- wired into import and promote (no GPU: the plan is synthetic, Triton is never asked) ----

def _jetson_orchestrator(tmp_path: Path, trt: str, cc: str):  # type: ignore[no-untyped-def]
    from orchestrator.delivery.trust import TrustPolicy  # noqa: PLC0415
    from orchestrator.settings import Settings  # noqa: PLC0415
    from orchestrator.usecases.orchestrator import Orchestrator  # noqa: PLC0415

    repository = tmp_path / "model_repository"
    if not repository.exists():
        (repository / "classifier").mkdir(parents=True)
        # Nothing served yet, so promote must judge v1 rather than find it already serving.
        config = JETSON_CONFIG.read_text().replace("versions: [ 1 ]", "versions: [ 99 ]")
        (repository / "classifier" / "config.pbtxt").write_text(config)
    settings = Settings(repository, state_dir=tmp_path / "state", triton_url="http://127.0.0.1:9",
                        tensorrt_version=trt, compute_capability=cc, timeout_s=1)
    return Orchestrator(settings, trust=TrustPolicy(tmp_path / "keys", allow_unsigned=True))


def test_import_refuses_a_plan_built_for_another_tensorrt_synthetic_plan_no_gpu(tmp_path: Path) -> None:
    from orchestrator.errors import PackageRejected  # noqa: PLC0415

    _, plan = plan_meta(tmp_path, trt_version="10.3.0.30")
    orchestrator = _jetson_orchestrator(tmp_path, trt="8.6.2", cc="8.7")
    with pytest.raises(PackageRejected, match=r"built with TensorRT 10\.3\.0\.30 but the server runs 8\.6\.2"):
        orchestrator.import_package(plan.parent)
    assert orchestrator.repository.model("classifier").versions() == []


def test_import_files_a_plan_for_this_tensorrt_and_gpu_synthetic_plan_no_gpu(tmp_path: Path) -> None:
    _, plan = plan_meta(tmp_path, trt_version="10.3.0.30")
    orchestrator = _jetson_orchestrator(tmp_path, trt="10.3.0", cc="8.7")
    assert orchestrator.import_package(plan.parent).version == 1


def test_promote_refuses_a_filed_plan_the_server_cannot_run_synthetic_plan_no_gpu(tmp_path: Path) -> None:
    from orchestrator.errors import PolicyViolation  # noqa: PLC0415

    _, plan = plan_meta(tmp_path, trt_version="10.3.0.30")
    _jetson_orchestrator(tmp_path, trt="10.3.0", cc="8.7").import_package(plan.parent)
    upgraded_gpu = _jetson_orchestrator(tmp_path, trt="10.3.0", cc="8.9")  # the device changed under the plan
    with pytest.raises(PolicyViolation, match=r"compute capability 8\.7.*is 8\.9"):
        upgraded_gpu.promote("classifier", 1)
