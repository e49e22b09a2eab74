"""The watcher against a real Triton: versions that turn bad are rolled back, healthy ones are left alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.daemons.watch import Watch, serve_metrics
from orchestrator.sample import Variant, write_faulty_package
from orchestrator.store.metafile import Verification, VersionStatus
from orchestrator.triton.embedded import free_ports

from .conftest import MODEL, Stack, Traffic
from .watchkit import TEST_WATCH, sample_value, set_watch_policy, wait_for, watch_rollbacks, watching

pytestmark = pytest.mark.triton


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
            assert wait_for(lambda: "1" in daemon.watchers[MODEL].latency_baselines, 15), "no v1 baseline"
        daemon_orch = stack.orchestrator()
        daemon_orch.promote(MODEL, 2)
        assert wait_for(lambda: watch_rollbacks(stack), 30), f"no automatic rollback for {mode}"
        recovered = time.monotonic()
        time.sleep(0.5)
    record = watch_rollbacks(stack)[0]
    assert (record.from_version, record.to_version) == (2, 1)
    evidence = record.details["evidence"]
    assert evidence["rule"] in rules, evidence
    assert evidence["detail"] and evidence["served"] == 2
    assert record.details["quarantine"] is True
    store = stack.store()
    assert store.served() == 1 and stack.served_by_triton() == 1
    assert store.status(2) is VersionStatus.QUARANTINED
    assert evidence["rule"] in (store.attestation(2).verification.reason or "")
    assert sample_value(daemon, "orchestrator_rollbacks_total", model=MODEL, rule=evidence["rule"],
                        trigger="watch") == 1
    assert sample_value(daemon, "orchestrator_anomalies_total", model=MODEL, rule=evidence["rule"],
                   severity="rollback") >= 1
    assert sample_value(daemon, "orchestrator_detection_latency_seconds_count", model=MODEL, rule=evidence["rule"]) == 1
    assert recovered  # and a quarantined version is not promoted again without --force
    assert stack.cli("promote", "v2").returncode == 4


def test_healthy_version_is_never_rolled_back_through_its_cold_start(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    # The latency rule stays on, with room for a loaded runner: the suite's other servers starting beside
    # this one slowed every version 4.7x for a second (measured in CI) against a baseline learnt in a quiet one.
    policy = {**TEST_WATCH, "rules": {**TEST_WATCH["rules"],
                                      "latency": {**TEST_WATCH["rules"]["latency"], "max_ratio": 10.0}}}
    with watching(stack, policy) as daemon, Traffic(stack.server.url, threads=2) as traffic:
        time.sleep(2.0)
        stack.orchestrator().promote(MODEL, 2)
        time.sleep(8.0)  # a sustained run: many grace periods, metric intervals and probe windows of v2
    assert watch_rollbacks(stack) == []
    assert stack.store().served() == 2
    assert traffic.failures() == []
    assert sample_value(daemon, "orchestrator_checks_total", model=MODEL) > 50
    rolled = [s for f in text_string_to_metric_families(_exposition(daemon)) for s in f.samples
              if s.name == "orchestrator_anomalies_total" and s.labels.get("severity") == "rollback"]
    assert rolled and {s.value for s in rolled} == {0.0}  # every rule's series there from the start, none moved


def test_no_verified_fallback_alerts_and_leaves_serving_alone(stack: Stack, tmp_path: Path, build_key):
    package = build_key.sign(write_faulty_package(tmp_path / "faulty", "nan", after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    stack.orchestrator().promote(MODEL, 2)
    store = stack.store()
    store.set_verification(1, Verification(status=VersionStatus.ROLLED_BACK, reason="test: nothing to go back to"))
    with watching(stack), Traffic(stack.server.url, threads=1):
        assert wait_for(lambda: any(r.action == "anomaly" for r in store.journal.read().records), 20)
        time.sleep(0.5)
    alerts = [r for r in store.journal.read().records if r.action == "anomaly"]
    assert alerts[0].result == "alert" and "rollback_refused" in alerts[0].details["evidence"]
    assert len(alerts) == 1  # alerted once, not on every check
    assert store.served() == 2 and watch_rollbacks(stack) == []


def test_triton_restart_under_the_watcher_causes_no_rollback(stack: Stack, packages):
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    with watching(stack) as daemon:
        time.sleep(1.5)
        stack.server.kill()
        time.sleep(1.5)
        assert sample_value(daemon, "orchestrator_triton_up") == 0
        stack.restart(load_models=())
        assert wait_for(lambda: stack.store().journal.read().records[-1].action == "reconcile", 20)
        time.sleep(3.0)
    assert watch_rollbacks(stack) == []
    assert stack.served_by_triton() == 2
    assert sample_value(daemon, "orchestrator_triton_up") == 1


def _exposition(daemon: Watch) -> str:
    port = free_ports(1)[0]
    serve_metrics(daemon.registry, port, "127.0.0.1")
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_exporter_serves_the_documented_series(stack: Stack):
    with watching(stack) as daemon:
        assert wait_for(lambda: sample_value(daemon, "orchestrator_checks_total", model=MODEL) > 5, 10)
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
    set_watch_policy(stack, TEST_WATCH)
    daemon = Watch(stack.settings(), None, stack.server.metrics_url, CollectorRegistry(), inbox=inbox,
                   inbox_quiet_s=0.0)
    notes = daemon.scan_inbox()
    assert any("filed classifier-better.tar.gz as classifier v2" in n for n in notes), notes
    assert (inbox / "done" / "classifier-better.tar.gz").exists()
    assert (inbox / "rejected" / "half.tar.gz").exists()
    assert "truncated or corrupt" in next((inbox / "rejected").glob("half.tar.gz*.reason")).read_text()
    assert (inbox / "still-downloading.tar.gz.part").exists()
    assert stack.store().versions() == [1, 2] and stack.served_by_triton() == 1


def test_a_poisoned_inbox_file_is_rejected_and_the_watch_process_keeps_running(stack: Stack, packages,
                                                                              tmp_path: Path):
    """The reproduction of the hardening issue: `framework: 5` in meta.yaml used to end the daemon at
    every start. Unsigned development mode, since `sign` refuses such a manifest."""
    import shutil  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    package = tmp_path / "poisoned"
    shutil.copytree(packages[Variant.BETTER], package)
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text().replace("framework:", "framework: 5\nold_framework:", 1))
    (package / "meta.yaml.sig").unlink()
    env = stack.env() | {"ORCH_ALLOW_UNSIGNED": "1"}
    refused = stack.cli("import", str(package), env=env)
    lines = refused.stderr.strip().splitlines()  # the warning that it is unsigned, then the one-line error
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert lines[-1].startswith("error: ") and "framework must map" in lines[-1]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with tarfile.open(inbox / "poisoned.tar.gz", "w:gz") as tar:
        tar.add(package, arcname="pkg")
    port = free_ports(1)[0]
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "watch", "--inbox", str(inbox),
                                "--metrics-port", str(port), "--metrics-address", "127.0.0.1"], env=env,
                               stderr=(tmp_path / "watch.log").open("w"))
    try:
        assert wait_for((inbox / "rejected" / "poisoned.tar.gz").exists, 60), "never rejected"
        time.sleep(3.0)
        assert process.poll() is None, "the watcher ended"
        assert "framework must map" in (inbox / "rejected" / "poisoned.tar.gz.reason").read_text()
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).ok
        assert stack.store().versions() == [1]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == 0, (tmp_path / "watch.log").read_text()


def test_a_judgement_about_a_version_no_longer_serving_switches_nothing(stack: Stack, packages):
    from orchestrator.errors import StaleJudgement  # noqa: PLC0415

    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    assert stack.cli("promote", "v2").returncode == 0
    assert stack.cli("rollback").returncode == 0  # the operator, first
    watcher_side = stack.orchestrator(actor="watch")
    with pytest.raises(StaleJudgement, match="v2 was judged, but v1 serves now"):
        watcher_side.rollback(MODEL, reason="watch: output_sanity", quarantine=True, judged=2)
    assert stack.served_by_triton() == 1
    assert stack.store().status(2) is VersionStatus.ROLLED_BACK  # not quarantined
    last = stack.store().journal.read().records[-1]
    assert (last.action.value, last.result.value, last.details["judged"]) == ("rollback", "refused", 2)


def test_a_full_state_disk_does_not_stop_a_rollback_and_the_journal_catches_up_injected_enospc(
        stack: Stack, tmp_path: Path, build_key, monkeypatch: pytest.MonkeyPatch):
    package = build_key.sign(write_faulty_package(tmp_path / "faulty-nan", "nan", after_requests=40))
    assert stack.cli("import", str(package)).returncode == 0
    with watching(stack) as daemon, Traffic(stack.server.url, threads=2):
        stack.orchestrator().promote(MODEL, 2)
        # From here the state disk takes no journal line and no attestation; the repository's disk still works.
        monkeypatch.setenv("ORCH_FAIL_WRITE", "version_history.log,attestations/2.json")
        assert wait_for(lambda: stack.served_by_triton() == 1, 30), "no rollback while the journal was full"
        assert watch_rollbacks(stack) == [] and stack.store().served() == 1
        assert wait_for(lambda: sample_value(daemon, "orchestrator_pending_writes") >= 3, 5)
        behind = stack.orchestrator().status(MODEL)[0].journal_behind
        assert behind is not None and "served v2" in behind
        assert daemon.watchers[MODEL].served == 1  # still watching, now the fallback
        monkeypatch.delenv("ORCH_FAIL_WRITE")
        assert wait_for(lambda: watch_rollbacks(stack), 10), "the kept records were not written"
        assert wait_for(lambda: sample_value(daemon, "orchestrator_pending_writes") == 0, 5)
    record = watch_rollbacks(stack)[0]
    assert (record.from_version, record.to_version) == (2, 1) and record.details["written_late_at"]
    assert record.details["quarantine"] is True
    assert stack.store().status(2) is VersionStatus.QUARANTINED  # the mark, written late too
    history = stack.store().journal.read()
    assert history.unfinished() is None and history.damaged == ()
    assert stack.orchestrator().status(MODEL)[0].journal_behind is None
