"""``replay:`` in policy.yaml: off by default, every bad setting named with its file and section."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.policy import Policies, PolicyError, ReplayPolicy, build_policies
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.policyfile import read_policies


def test_replay_is_off_by_default_with_the_documented_values() -> None:
    policy = Policies().replay
    assert policy == ReplayPolicy(enabled=False, max_mb=64, every_n=20, min_samples=50, require=False,
                                  min_top1_agreement=0.5, min_box_agreement=0.6, max_count_diff=1.0, limit=200)
    assert policy.max_bytes == 64 * 2**20
    assert build_policies({}, "p").replay == policy
    from orchestrator.core import policy as module  # noqa: PLC0415 - its docstring documents the section

    assert "replay:" in (module.__doc__ or "") and "PRODUCTION DATA" in (module.__doc__ or "")


def test_the_section_is_read_from_policy_yaml(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("replay:\n  enabled: true\n  max_mb: 0.5\n  every_n: 5\n  require: true\n")
    policy = read_policies(tmp_path).replay
    assert (policy.enabled, policy.max_bytes, policy.every_n, policy.require) == (True, 2**19, 5, True)


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_mb": 0}, "max_mb must be a number > 0"),
    ({"max_mb": float("inf")}, "max_mb must be a number > 0"),
    ({"every_n": 0}, "every_n must be an integer >= 1"),
    ({"limit": 0}, "limit must be an integer >= 1"),
    ({"min_samples": 0}, "min_samples must be an integer >= 1"),
    ({"min_samples": 300}, "min_samples (300) must be <= limit (200)"),
    ({"min_top1_agreement": 1.5}, "min_top1_agreement must be within 0..1"),
    ({"min_box_agreement": -0.1}, "min_box_agreement must be within 0..1"),
    ({"max_count_diff": -1}, "max_count_diff must be a number >= 0"),
    ({"every_n": 2.5}, "every_n must be an integer, not 2.5"),
    ({"enabled": "yes"}, "enabled must be true or false, not 'yes'"),
    ({"sample_rate": 0.1}, "unknown setting(s) sample_rate"),
])
def test_a_bad_setting_is_refused_naming_it(settings: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        build_policies({"replay": settings}, "policy.yaml")
    assert str(refused.value).startswith("policy.yaml replay") and message in str(refused.value)


def test_a_bad_section_in_the_file_is_a_corrupt_repository_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("replay:\n  every_n: 0\n")
    with pytest.raises(RepositoryCorrupt, match=r"policy.yaml replay: every_n must be an integer >= 1"):
        read_policies(tmp_path)
    (tmp_path / "policy.yaml").write_text("replay: [1, 2]\n")
    with pytest.raises(RepositoryCorrupt, match=r"policy.yaml replay must be a mapping"):
        read_policies(tmp_path)
