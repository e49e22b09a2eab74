"""Package verification without a server: checksums, contract, archives."""

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from orchestrator.delivery.package import unpacked, verify_package
from orchestrator.errors import PackageRejected
from orchestrator.sample import CONFIG, Variant, write_sample_package
from orchestrator.store.metafile import META_FILE, read_meta
from orchestrator.store.modelconfig import parse_config

MODEL_CONFIG = parse_config(CONFIG)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_sample_package(tmp_path_factory.mktemp("pkg") / "good", Variant.BETTER)


def copy(good: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(good, dest)
    return dest


def test_good_package_verifies(good):
    meta = verify_package(good, "good", "classifier", MODEL_CONFIG)
    assert set(meta.artifacts) == {"model.onnx", "model.py"}


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: (p / "model.onnx").write_bytes((p / "model.onnx").read_bytes()[:100]), "does not match meta"),
    (lambda p: (p / "model.onnx").unlink(), "missing"),
    (lambda p: (p / META_FILE).unlink(), "meta.yaml"),
    (lambda p: (p / META_FILE).write_text("model: [unclosed"), "not valid YAML"),
    (lambda p: (p / "extra.bin").write_bytes(b"x"), "not listed in meta.yaml"),
    (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text().replace("model: classifier", "model: other")),
     "for model 'other'"),
    (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text().replace("LOGITS", "SCORES")),
     "output LOGITS missing"),
    (lambda p: (p / META_FILE).write_text((p / META_FILE).read_text().replace("FP32", "FP16", 1)),
     "IMAGE:FP16[3, 16, 16] but the config says IMAGE:FP32[3, 16, 16]"),
])
def test_bad_packages_are_refused_with_the_reason(good, tmp_path, damage, reason):
    package = copy(good, tmp_path)
    damage(package)
    with pytest.raises(PackageRejected, match="refused") as caught:
        verify_package(package, str(package), "classifier", MODEL_CONFIG)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def _tar(path: Path, members: dict[str, bytes], kind: bytes = tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.type = kind
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_unpacks_and_verifies(good, tmp_path):
    archive = tmp_path / "good.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(good, arcname="classifier-v2")
    with unpacked(archive) as folder:
        assert verify_package(folder, "a", "classifier", MODEL_CONFIG).model == "classifier"


def test_truncated_archive_is_refused(good, tmp_path):
    archive = tmp_path / "good.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(good, arcname="classifier-v2")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageRejected, match="truncated or corrupt"), unpacked(archive):
        pass


def test_archive_escaping_the_folder_is_refused(tmp_path):
    archive = _tar(tmp_path / "evil.tar.gz", {"../escape.txt": b"x"})
    with pytest.raises(PackageRejected), unpacked(archive):
        pass
    assert not (tmp_path / "escape.txt").exists()


def test_archive_with_links_is_refused(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("meta.yaml")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PackageRejected, match="not a plain file"), unpacked(archive):
        pass


def test_missing_package_is_refused(tmp_path):
    with pytest.raises(PackageRejected, match="no such file"), unpacked(tmp_path / "nope.tar.gz"):
        pass


def test_package_meta_records_contract_and_provenance(good):
    meta = read_meta(good / META_FILE)
    assert meta.contract.inputs[0].name == "IMAGE"
    assert meta.framework["runtime"] == "onnxruntime"
    assert "variant=better" in meta.source


def test_decompression_bomb_is_refused_before_extraction(tmp_path):
    archive = _tar(tmp_path / "bomb.tar.gz", {"meta.yaml": b"model: classifier\n", "model.onnx": bytes(50 << 20)})
    assert archive.stat().st_size < 200_000  # 50 MiB of zeros in a few dozen KiB
    with pytest.raises(PackageRejected, match=r"expands \d+x"), unpacked(archive):
        pass


def test_hard_links_and_devices_in_an_archive_are_refused(tmp_path):
    for kind in (tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        archive = tmp_path / f"odd-{kind!r}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("model.onnx")
            info.type = kind
            info.linkname = "meta.yaml" if kind == tarfile.LNKTYPE else ""
            tar.addfile(info)
        with pytest.raises(PackageRejected, match="not a plain file"), unpacked(archive):
            pass


def _copy(good: Path, tmp_path: Path) -> Path:
    return copy(good, tmp_path)


def _add_artifact(package: Path, name: str, data: bytes) -> None:
    """An extra file, listed in meta.yaml with its checksum (as a builder would sign it)."""
    import hashlib  # noqa: PLC0415

    (package / name).write_bytes(data)
    meta = package / META_FILE
    text = meta.read_text()
    digest = hashlib.sha256(data).hexdigest()
    meta.write_text(text.replace("artifacts:\n", f"artifacts:\n  {name}:\n    sha256: {digest}\n", 1))


@pytest.mark.parametrize(("name", "config_text"), [
    ("libplugin.so", None),  # a TensorRT plugin beside the model: runs with the server's rights
    ("libcustom.so.8", None),
    ("model.py", "onnx"),  # Python the onnxruntime backend never needs
])
def test_code_the_backend_does_not_need_is_refused(good, tmp_path, name, config_text):
    copy = _copy(good, tmp_path)
    config = MODEL_CONFIG
    if config_text == "onnx":
        config = parse_config(CONFIG.replace('backend: "python"', 'backend: "onnxruntime"'))
        from dataclasses import replace  # noqa: PLC0415

        from orchestrator.store.metafile import write_meta  # noqa: PLC0415

        (copy / "model.py").unlink()
        meta = read_meta(copy / META_FILE)
        write_meta(copy / META_FILE, replace(meta, artifacts={k: v for k, v in meta.artifacts.items()
                                                              if k != "model.py"}))
    _add_artifact(copy, name, b"\x7fELF or python")
    with pytest.raises(PackageRejected, match=f"{name}: code Triton would load"):
        verify_package(copy, "pkg", "classifier", config)


def test_a_python_backend_may_carry_helper_modules(good, tmp_path):
    copy = _copy(good, tmp_path)
    _add_artifact(copy, "helpers.py", b"def f():\n    return 1\n")
    assert "helpers.py" in verify_package(copy, "pkg", "classifier", MODEL_CONFIG).artifacts
