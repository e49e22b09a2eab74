"""What a device ships with for the sample classifier, built once and installed into many device folders.

The image is the classifier part of the shipped sample (``scripts/make_sample_models.py repository``,
byte for byte: ``tests/unit/test_device_image.py`` holds them equal): ``config.pbtxt`` serving v1, the
verified v1 (baseline network and its runner), the promotion policy and the golden set::

    <image>/model_repository/classifier/config.pbtxt, 1/{model.onnx, model.py, meta.yaml}
    <image>/orchestrator_state/classifier/policy.yaml, golden/{inputs.npy, labels.npy}

``install_image`` gives a device its own copy cheaply: the files the orchestrator never writes again
(a filed version's folder, the golden set) are hard links to the image's, so a thousand devices hold
one copy of them; the files it rewrites (config.pbtxt, policy.yaml) are copied. A hard link is safe
because the store changes nothing in place: a filed version's folder is never written (its verification
lives in ``attestations/``), every rewrite is a new file renamed over the old one, and a prune unlinks.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.sample import CONFIG, MODEL, SEED_TIME, Variant, golden_accuracy, save_golden, write_sample_package
from orchestrator.store.metafile import META_FILE, Verification, VersionStatus, read_meta, write_meta

# The sample classifier's promotion policy, as scripts/make_sample_models.py writes it.
POLICY = """# Promotion policy for the sample classifier (see orchestrator/core/policy.py for every field).
promotion:
  warmup_requests: 3
  output_bound: 1.0e4
  max_score_drop: 0.0
  keep_resident: 1
  golden: golden
  batch_size: 8
"""
REPOSITORY, STATE = "model_repository", "orchestrator_state"
_COMPLETE = ".complete"
_COPIED = ("config.pbtxt", "policy.yaml")  # rewritten by the orchestrator: each device its own


@dataclass(frozen=True)
class DeviceImage:
    root: Path

    @property
    def repository(self) -> Path:
        return self.root / REPOSITORY

    @property
    def state(self) -> Path:
        return self.root / STATE


def write_device_image(dest: Path) -> DeviceImage:
    """The image under ``dest``; one already complete there is reused as it is."""
    image = DeviceImage(dest)
    if (dest / _COMPLETE).exists():
        return image
    shutil.rmtree(dest, ignore_errors=True)
    model, state = image.repository / MODEL, image.state / MODEL
    model.mkdir(parents=True)
    state.mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (state / "policy.yaml").write_text(POLICY)
    save_golden(state / "golden")
    version = write_sample_package(model / "1", Variant.BASELINE)
    seeded = Verification(status=VersionStatus.VERIFIED, verified_by="seed", verified_at=SEED_TIME,
                          golden={"accuracy": golden_accuracy(Variant.BASELINE)})
    write_meta(version / META_FILE, replace(read_meta(version / META_FILE), version=1, verification=seeded))
    (dest / _COMPLETE).touch()
    return image


def install_image(image: DeviceImage, repository: Path, state: Path, link: bool = True) -> None:
    """A device's repository and state folder from ``image``: immutable files hard-linked (``link``, when the
    file system allows), the rest copied. ``repository`` and ``state`` must not exist yet."""
    for source, target in ((image.repository, repository), (image.state, state)):
        for folder in sorted(p for p in source.rglob("*") if p.is_dir()):
            (target / folder.relative_to(source)).mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            _place(path, target / path.relative_to(source), link and path.name not in _COPIED)


def _place(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copyfile(source, target)
