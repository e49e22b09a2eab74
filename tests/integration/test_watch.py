"""The watcher against a real Triton: versions that turn bad are rolled back, healthy ones are left alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded import free_ports
from orchestrator.meta import Verification, VersionStatus
from orchestrator.sample import Variant, write_faulty_package
from orchestrator.watch.daemon import Watch, serve_metrics

from .conftest import MODEL, Stack, Traffic

pytestmark = pytest.mark.triton

# Short windows so a test takes seconds; the rules themselves are the shipped ones.
TEST_WATCH = {"grace_s": 1.0, "metrics_interval_s": 0.5,
              "rules": {"latency": {"min_requests": 10}, "error_rate": {"min_requests": 10}}}


def _watch_policy(stack: Stack) -> None:
    path = stack.state / MODEL / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["watch"] = TEST_WATCH
    path.write_text(yaml.safe_dump(policy))


@contextmanager
def watching(stack: Stack) -> Iterator[Watch]:
    _watch_policy(stack)
    daemon = Watch(stack.settings(), None, stack.server.metrics_url, CollectorRegistry())
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "watch did not stop"


def _wait_for(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _watch_rollbacks(stack: Stack) -> list:  # type: ignore[type-arg]
    return [r for r in stack.store().journal.read().records
            if r.action == "rollback" and r.result == "succeeded" and r.actor == "watch"]


def _sample(daemon: Watch, name: str, **labels: str) -> float:
    return daemon.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("mode", "rules"), [
    ("nan", {"output_sanity"}),
    ("zeros", {"output_sanity"}),
    ("exploding", {"output_sanity"}),
    ("divergent", {"divergence", "golden_score"}),
    ("errors", {"probe_errors", "error_rate"}),
    ("crash", {"probe_errors", "error_rate", "health"}),
    ("slow", {"latency"}),
])
def test_version_that_turns_bad_is_rolled_back_and_quarantined(stack: Stack, tmp_path: Path, build_key, mode, rules):
    package = build_key.sign(write_faulty_package(tmp_path / f"faulty-{mode}", mode, after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    with watching(stack) as daemon, Traffic(stack.server.url, threads=2):
        if mode == "slow":  # the latency rule compares with what v1 did while it served
            assert _wait_for(lambda: "1" in daemon.watchers[MODEL].latency_baselines, 15), "no v1 baseline"
        daemon_orch = stack.orchestrator()
        daemon_orch.promote(MODEL, 2)
        assert _wait_for(lambda: _watch_rollbacks(stack), 30), f"no automatic rollback for {mode}"
        recovered = time.monotonic()
        time.sleep(0.5)
    record = _watch_rollbacks(stack)[0]
    assert (record.from_version, record.to_version) == (2, 1)
    evidence = record.details["evidence"]
    assert evidence["rule"] in rules, evidence
    assert evidence["detail"] and evidence["served"] == 2
    assert record.details["quarantine"] is True
    store = stack.store()
    assert store.served() == 1 and stack.served_by_triton() == 1
    assert store.status(2) is VersionStatus.QUARANTINED
    assert evidence["rule"] in (store.meta(2).verification.reason or "")
    assert _sample(daemon, "orchestrator_rollbacks_total", model=MODEL, rule=evidence["rule"]) == 1
    assert _sample(daemon, "orchestrator_anomalies_total", model=MODEL, rule=evidence["rule"],
                   severity="rollback") >= 1
    assert _sample(daemon, "orchestrator_detection_latency_seconds_count", model=MODEL, rule=evidence["rule"]) == 1
    assert recovered  # and a quarantined version is not promoted again without --force
    assert stack.cli("promote", "v2").returncode == 4


def test_healthy_version_is_never_rolled_back_through_its_cold_start(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    with watching(stack) as daemon, Traffic(stack.server.url, threads=2) as traffic:
        time.sleep(2.0)
        stack.orchestrator().promote(MODEL, 2)
        time.sleep(8.0)
    assert _watch_rollbacks(stack) == []
    assert stack.store().served() == 2
    assert traffic.failures() == []
    assert _sample(daemon, "orchestrator_checks_total", model=MODEL) > 50
    rolled = [s for f in text_string_to_metric_families(_exposition(daemon)) for s in f.samples
              if s.name == "orchestrator_anomalies_total" and s.labels.get("severity") == "rollback"]
    assert rolled == []


def test_no_verified_fallback_alerts_and_leaves_serving_alone(stack: Stack, tmp_path: Path, build_key):
    package = build_key.sign(write_faulty_package(tmp_path / "faulty", "nan", after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    stack.orchestrator().promote(MODEL, 2)
    store = stack.store()
    store.set_verification(1, Verification(status=VersionStatus.ROLLED_BACK, reason="test: nothing to go back to"))
    with watching(stack), Traffic(stack.server.url, threads=1):
        assert _wait_for(lambda: any(r.action == "anomaly" for r in store.journal.read().records), 20)
        time.sleep(0.5)
    alerts = [r for r in store.journal.read().records if r.action == "anomaly"]
    assert alerts[0].result == "alert" and "rollback_refused" in alerts[0].details["evidence"]
    assert len(alerts) == 1  # alerted once, not on every check
    assert store.served() == 2 and _watch_rollbacks(stack) == []


def test_triton_restart_under_the_watcher_causes_no_rollback(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    with watching(stack) as daemon:
        time.sleep(1.5)
        stack.server.kill()
        time.sleep(1.5)
        assert _sample(daemon, "orchestrator_triton_up") == 0
        stack.restart(load_models=())
        assert _wait_for(lambda: stack.store().journal.read().records[-1].action == "reconcile", 20)
        time.sleep(3.0)
    assert _watch_rollbacks(stack) == []
    assert stack.served_by_triton() == 2
    assert _sample(daemon, "orchestrator_triton_up") == 1


def _exposition(daemon: Watch) -> str:
    port = free_ports(1)[0]
    serve_metrics(daemon.registry, port, "127.0.0.1")
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_exporter_serves_the_documented_series(stack: Stack):
    with watching(stack) as daemon:
        assert _wait_for(lambda: _sample(daemon, "orchestrator_checks_total", model=MODEL) > 5, 10)
    families = {f.name: f for f in text_string_to_metric_families(_exposition(daemon))}
    for name in ("orchestrator_served_version", "orchestrator_resident_version", "orchestrator_rollbacks",
                 "orchestrator_anomalies", "orchestrator_switch_duration_seconds",
                 "orchestrator_detection_latency_seconds", "orchestrator_promotions",
                 "orchestrator_last_check_timestamp_seconds", "orchestrator_triton_up", "orchestrator_checks"):
        assert name in families, name
    served = [s for s in families["orchestrator_served_version"].samples if s.labels == {"model": MODEL}]
    assert served[0].value == 1
    assert families["orchestrator_last_check_timestamp_seconds"].samples[0].value > time.time() - 60


def test_inbox_packages_are_filed_or_rejected_with_the_reason(stack: Stack, packages, tmp_path: Path):
    import tarfile  # noqa: PLC0415

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = inbox / "classifier-better.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(packages[Variant.BETTER], arcname="classifier-better")
    bad = inbox / "half.tar.gz"
    bad.write_bytes(good.read_bytes()[:2000])
    (inbox / "still-downloading.tar.gz.part").write_bytes(b"x")
    _watch_policy(stack)
    daemon = Watch(stack.settings(), None, stack.server.metrics_url, CollectorRegistry(), inbox=inbox,
                   inbox_quiet_s=0.0)
    notes = daemon.scan_inbox()
    assert any("filed classifier-better.tar.gz as classifier v2" in n for n in notes), notes
    assert (inbox / "done" / "classifier-better.tar.gz").exists()
    assert (inbox / "rejected" / "half.tar.gz").exists()
    assert "truncated or corrupt" in next((inbox / "rejected").glob("half.tar.gz*.reason")).read_text()
    assert (inbox / "still-downloading.tar.gz.part").exists()
    assert stack.store().versions() == [1, 2] and stack.served_by_triton() == 1
