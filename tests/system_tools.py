"""System programs some tests need (Debian's prometheus package: promtool, prometheus)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The program's path; without it the test is skipped, or fails where ``CI`` is set (CI installs it)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing (scripts/system-deps installs Debian's prometheus package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found
