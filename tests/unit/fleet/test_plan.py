"""Rollout plans: every setting checked once, with its path; cumulative waves; gates bounded the right way."""

from __future__ import annotations

import pytest

from orchestrator.fleet.plan import PlanError, build_plan

from .planning import SHA, plan, raw_plan


def test_a_full_plan_builds() -> None:
    built = plan(selector={"site": ["s0", "s1"]}, spread=["site", "hw"], on_label_failure="block",
                 waves=[{"name": "canary", "selector": {"role": "canary"}, "approval": True},
                        {"percent": 50, "bake_s": 5, "max_unavailable": 3}, {"percent": 100}])
    assert built.package.sha256 == SHA and built.selector.matches({"site": "s1"})
    assert not built.selector.matches({"site": "s2"}) and not built.selector.matches({})
    canary, half, rest = built.waves
    assert canary.name == "canary" and canary.approval and canary.selector is not None and canary.percent is None
    assert half.bake_s == 5 and half.max_unavailable == 3 and rest.bake_s == 100 and rest.max_unavailable < 1
    assert [g.metric for g in built.gates] == ["verified_ratio", "error_rate"]
    assert built.deadlines.ack_s == 30 and built.on_label_failure == "block"


def test_without_max_unavailable_a_tenth_of_a_wave_installs_at_once() -> None:
    raw = raw_plan()
    raw["defaults"] = {k: v for k, v in raw.get("defaults", {}).items() if k != "max_unavailable"}
    raw["waves"] = [{k: v for k, v in w.items() if k != "max_unavailable"} for w in raw["waves"]]
    assert {w.max_unavailable for w in build_plan(raw).waves} == {0.1}


def test_without_gates_every_device_must_verify() -> None:
    built = build_plan({k: v for k, v in raw_plan().items() if k != "gates"})
    assert [(g.metric, g.min) for g in built.gates] == [("verified_ratio", 1.0)]


@pytest.mark.parametrize(("change", "message"), [
    ({"waves": [{"percent": 30}, {"percent": 10}, {"percent": 100}]}, "waves are cumulative"),
    ({"waves": [{"percent": 10}, {"percent": 60}]}, "the last wave must be percent: 100"),
    ({"waves": [{"percent": 100, "selector": {"a": "b"}}]}, "a percent or a selector"),
    ({"waves": [{"percent": 100, "bake": 5}]}, "unknown key 'bake'"),
    ({"gates": [{"metric": "error_rate", "min": 0.1}]}, "error_rate is bounded by max"),
    ({"gates": [{"metric": "verified_ratio", "max": 0.1}]}, "verified_ratio is bounded by min"),
    ({"gates": [{"metric": "accuracy", "max": 0.1}]}, "metric 'accuracy'"),
    ({"gates": [{"metric": "error_rate", "max": 0.1, "min_sampel": 5}]}, "unknown key 'min_sampel'"),
    ({"gates": [{"metric": "error_rate", "compare": "control", "max_ratio": 2, "max": 0.1}]}, "takes max_ratio"),
    ({"gates": [{"metric": "verified_ratio", "compare": "control", "max_ratio": 2}]}, "not yet updated"),
    ({"gates": [{"metric": "failure_ratio", "compare": "control", "max_ratio": 2}]}, "error_rate, latency_ms"),
    ({"gates": [{"metric": "rollbacks", "compare": "control", "max_ratio": 2}]}, "error_rate, latency_ms"),
    ({"package": {"url": "ftp://x", "sha256": SHA}}, "package.url"),
    ({"package": {"url": "file:///srv/p.tar.gz", "sha256": SHA}}, "http"),
    ({"package": {"url": "http://x", "sha256": "abc"}}, "64 lower-case hex"),
    ({"rollout": "a/b"}, "rollout must be a name"),
    ({"defaults": {"max_unavailable": "0%"}}, "above 0"),
    ({"on_label_failure": "ignore"}, "on_label_failure"),
    ({"deadlines": {"ack_s": -1}}, "deadlines.ack_s"),
])
def test_a_wrong_setting_is_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(**change)


def test_required_keys_are_named() -> None:
    raw = raw_plan()
    del raw["package"]
    with pytest.raises(PlanError, match="'package' is required"):
        build_plan(raw)
