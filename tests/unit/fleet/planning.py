"""Plans and device views for the pure fleet tests."""

from __future__ import annotations

from typing import Any

from orchestrator.fleet.gates import Usage
from orchestrator.fleet.plan import Plan, build_plan
from orchestrator.fleet.rollout import DeviceView

SHA = "ab" * 32


def raw_plan(**overrides: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "rollout": "r1", "model": "classifier", "package": {"url": "http://pkg/v2.tar.gz", "sha256": SHA},
        "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}, {"percent": 100}],
        "defaults": {"bake_s": 100, "max_unavailable": "100%"},
        "deadlines": {"ack_s": 30, "install_s": 60, "verify_slack_s": 50, "revert_s": 40},
        "gates": [{"name": "verified", "metric": "verified_ratio", "min": 0.9},
                  {"name": "errors", "metric": "error_rate", "max": 0.01, "min_sample": 100}],
    }
    plan.update(overrides)
    return plan


def plan(**overrides: Any) -> Plan:
    return build_plan(raw_plan(**overrides))


def fleet(count: int, nano_every: int = 0) -> dict[str, DeviceView]:
    """``count`` devices serving v1; every ``nano_every``-th one is hw=jetson-nano."""
    devices = {}
    for i in range(count):
        hw = "jetson-nano" if nano_every and i % nano_every == 0 else "xavier-nx"
        name = f"d{i:04d}"
        devices[name] = DeviceView(name, {"site": f"s{i % 3}", "hw": hw}, served=1,
                                   usage={1: Usage(requests=1000, errors=1)})
    return devices
