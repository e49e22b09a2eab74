"""The alert rules and the scrape config, checked by Prometheus's own promtool: syntax, and a unit test
of every alert (tests/prometheus/alerts.test.yml), including a series that appears already at 1."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_accepts_the_shipped_scrape_config(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # where compose mounts RULES
    config["rule_files"] = [str(RULES)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = _run(promtool, "check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _test_with(promtool: str, tmp_path: Path, old: str, new: str) -> str:
    """promtool's unit tests against the rules with ``old`` replaced by ``new``: what it prints (they must fail)."""
    rules = RULES.read_text().replace(old, new)
    assert rules != RULES.read_text()
    (tmp_path / "docker" / "prometheus").mkdir(parents=True)
    (tmp_path / "docker" / "prometheus" / "alerts.yml").write_text(rules)
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "prometheus" / "alerts.test.yml")
    result = _run(promtool, "test", "rules", str(tmp_path / "tests" / "prometheus" / "alerts.test.yml"))
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def test_the_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """Without the "appeared already at 1" branch the rollback alert misses that case: the tests see it."""
    output = _test_with(promtool, tmp_path, "            or (orchestrator_rollbacks_total unless "
                                            "orchestrator_rollbacks_total offset 15m) > 0\n", "")
    assert "absent, then 1" in output


FLEET_MUTATIONS = {  # what the fleet alerts' tests catch: (old, new, words of the test that fails)
    "halted-without-its-date": (
        "          and on(instance, rollout) (time() - orchestrator_fleet_rollout_last_step_timestamp_seconds)"
        " < 3600\n", "", "an old halt newly scraped does not"),
    "gate-failing-on-finished-rollouts": (
        '          unless on(instance, rollout) orchestrator_fleet_rollout_phase{phase=~"succeeded|halted|aborted"} '
        "== 1\n", "", "not on a finished one"),
    "silent-by-presence-only": (
        "          or on(instance, job)\n"
        "          (max without (quantile) (orchestrator_fleet_device_last_report_age_seconds"
        '{quantile="0.9"}) > 900)\n',
        "", "by presence or by report age"),
    "left-on-version-at-once": ("        expr: orchestrator_fleet_left_on_version > 0\n        for: 10m\n",
                                "        expr: orchestrator_fleet_left_on_version > 0\n",
                                "reverts that finish in time do not"),
}


@pytest.mark.parametrize("name", FLEET_MUTATIONS)
def test_the_fleet_alerts_unit_tests_can_fail(promtool: str, tmp_path: Path, name: str) -> None:
    old, new, words = FLEET_MUTATIONS[name]
    assert words in _test_with(promtool, tmp_path, old, new)


def test_the_fleet_controller_is_scraped_by_its_service_name_and_its_alerts_read_that_job() -> None:
    """A device's own stack runs no controller: a name that does not resolve is no target, so no
    FleetControllerDown there; where the compose network has a fleet-controller it is scraped."""
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "orchestrator-fleet"]
    assert job["dns_sd_configs"] == [{"names": ["fleet-controller"], "type": "A", "port": 9400}]
    fleet = [rule for group in yaml.safe_load(RULES.read_text())["groups"] if group["name"] == "fleet-controller"
             for rule in group["rules"]]
    assert {rule["alert"] for rule in fleet} == {
        "FleetRolloutHalted", "FleetRolloutBlockProposed", "FleetRolloutPaused", "FleetDevicesLeftOnBadVersion",
        "FleetGateFailing", "FleetDevicesSilent", "FleetControllerDown"}
    (down,) = [rule for rule in fleet if rule["alert"] == "FleetControllerDown"]
    assert down["expr"] == 'up{job="orchestrator-fleet"} == 0'
    for rule in fleet:
        # each tells the operator what to run
        assert "`orchestrate fleet" in rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {rule["alert"] for rule in _alerts()} <= fired


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_severity_a_summary_and_a_runbook_section_in_the_readme() -> None:
    anchors = _anchors(README.read_text())
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://") and "README.md#" in url, rule["alert"]
        assert url.rsplit("#", 1)[1] in anchors, f"{rule['alert']}: no README section {url.rsplit('#', 1)[1]}"
