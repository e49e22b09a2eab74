"""Shared fixtures. A missing tritonserver is a failure, never a skip: the suite installs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sample import Variant, write_sample_package

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[Variant, Path]:
    """One package folder per sample variant, built once."""
    root = tmp_path_factory.mktemp("packages")
    return {variant: write_sample_package(root / variant.value, variant) for variant in Variant}
