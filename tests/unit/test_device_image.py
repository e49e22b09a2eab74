"""The device image is the shipped sample's classifier, byte for byte, and devices share its immutable files."""

from __future__ import annotations

import filecmp
from pathlib import Path

from orchestrator.sample.device_image import install_image, write_device_image

ROOT = Path(__file__).resolve().parents[2]
FILES = ["model_repository/classifier/config.pbtxt", "model_repository/classifier/1/model.onnx",
         "model_repository/classifier/1/model.py", "model_repository/classifier/1/meta.yaml",
         "orchestrator_state/classifier/policy.yaml", "orchestrator_state/classifier/golden/inputs.npy",
         "orchestrator_state/classifier/golden/labels.npy"]


def test_the_image_is_the_shipped_sample_classifier(tmp_path: Path) -> None:
    image = write_device_image(tmp_path / "image")
    for relative in FILES:
        assert filecmp.cmp(ROOT / relative, image.root / relative, shallow=False), relative
    found = {str(p.relative_to(image.root)) for p in image.root.rglob("*") if p.is_file() and p.name != ".complete"}
    assert found == set(FILES)
    assert write_device_image(tmp_path / "image") == image  # complete: reused


def test_devices_link_what_is_never_rewritten_and_copy_the_rest(tmp_path: Path) -> None:
    image = write_device_image(tmp_path / "image")
    for name in ("a", "b"):
        install_image(image, tmp_path / name / "model_repository", tmp_path / name / "orchestrator_state")
    a, b = tmp_path / "a", tmp_path / "b"
    for relative in FILES:
        assert filecmp.cmp(image.root / relative, a / relative, shallow=False), relative
        shared = (a / relative).stat().st_ino == (b / relative).stat().st_ino
        assert shared == (Path(relative).name not in ("config.pbtxt", "policy.yaml")), relative
    (a / FILES[0]).write_text("changed")
    assert filecmp.cmp(image.root / FILES[0], b / FILES[0], shallow=False)


def test_without_links_every_file_is_a_copy(tmp_path: Path) -> None:
    image = write_device_image(tmp_path / "image")
    install_image(image, tmp_path / "a" / "model_repository", tmp_path / "a" / "orchestrator_state", link=False)
    for relative in FILES:
        assert (tmp_path / "a" / relative).stat().st_nlink == 1, relative
