"""Shared fixtures. A missing tritonserver is a failure, never a skip: the suite installs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.delivery.signing import generate_keypair, sign_package
from orchestrator.sample import Variant, write_sample_package

ROOT = Path(__file__).resolve().parent.parent
DETECTOR_ENTRIES = ("detection", "detector", "detector_nms", "detector_pre")


def classifier_only(folder: str, names: list[str]) -> list[str]:
    """``shutil.copytree`` ignore: the sample repository (and state) without the detector ensemble, for the
    tests whose subject is the classifier alone (the twin serves no ensembles; one model needs no names)."""
    return [n for n in names if n in DETECTOR_ENTRIES] if Path(folder).name in (
        "model_repository", "orchestrator_state") else []


@dataclass(frozen=True)
class BuildKey:
    """The build side's signing key; its public half is what a device trusts."""

    private: Path
    public: Path

    def sign(self, package: Path) -> Path:
        sign_package(package, self.private)
        return package


@pytest.fixture(scope="session")
def build_key(tmp_path_factory: pytest.TempPathFactory) -> BuildKey:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "builder.key", folder / "builder.pub")
    return BuildKey(folder / "builder.key", folder / "builder.pub")


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory, build_key: BuildKey) -> dict[Variant, Path]:
    """One signed package folder per sample variant, built once."""
    root = tmp_path_factory.mktemp("packages")
    return {variant: build_key.sign(write_sample_package(root / variant.value, variant)) for variant in Variant}
