"""The watch daemon on the twin: Triton down is reported and never rolled back; when it answers
again every model is reconciled to the disk and watched afresh (mirrors the integration test's restart)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from orchestrator.daemons.watch import Watch
from orchestrator.sample import Variant
from orchestrator.triton import metrics as triton_metrics

from .conftest import MODEL, NOWHERE, Env


def daemon(env: Env) -> tuple[Watch, CollectorRegistry]:
    env.monkeypatch.setattr(triton_metrics, "scrape", lambda url, timeout_s: None)  # no /metrics, no socket
    env.set_policy("watch", grace_s=0)
    registry = CollectorRegistry()
    watch = Watch(env.settings(), None, NOWHERE, registry=registry, triton=env.twin, clock=env.clock)
    return watch, registry


def ticks(env: Env, watch: Watch, count: int) -> None:
    for _ in range(count):
        watch.tick()
        env.clock.sleep(watch.interval())


def rollbacks(env: Env) -> list[Any]:
    return [r for r in env.records() if r.action == "rollback"]


def test_triton_down_then_restarted_is_watched_afresh_without_a_rollback(env: Env) -> None:
    env.promote_better()
    watch, registry = daemon(env)
    ticks(env, watch, 3)
    first = watch.watchers[MODEL]
    assert registry.get_sample_value("orchestrator_triton_up") == 1
    env.twin.stop()
    ticks(env, watch, 5)
    assert watch.down_since is not None and registry.get_sample_value("orchestrator_triton_up") == 0
    assert rollbacks(env) == [] and env.store().served() == 2  # a server outage is no version's fault
    env.twin.start()  # back, its start-up model loaded from the disk's policy, cold
    ticks(env, watch, 1)
    assert watch.down_since is None
    assert watch.watchers[MODEL] is not first  # fresh baseline, streaks and grace
    assert {v: e.state.value for v, e in env.twin.states(MODEL).items()} == {1: "READY", 2: "READY"}
    ticks(env, watch, 5)
    assert rollbacks(env) == [] and env.served_by_twin() == 2


def test_a_model_triton_lost_while_down_is_loaded_again_when_it_answers(env: Env) -> None:
    """What the disk says wins: the model is unloaded behind the daemon's back during the outage."""
    env.promote_better()
    watch, _ = daemon(env)
    ticks(env, watch, 3)
    env.twin.stop()
    ticks(env, watch, 2)
    env.twin.start()
    env.twin.unload(MODEL)  # as if Triton came back without --load-model
    ticks(env, watch, 1)
    assert {v: e.state.value for v, e in env.twin.states(MODEL).items() if e.state.value == "READY"} == \
        {1: "READY", 2: "READY"}
    reconcile = [r for r in env.records() if r.action == "reconcile"]
    assert [r.result.value for r in reconcile] == ["succeeded"] and reconcile[0].to_version == 2
    assert rollbacks(env) == []


def _archive(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname="pkg")
    return dest


def test_a_package_whose_meta_has_a_field_of_the_wrong_type_goes_to_rejected_with_the_reason(env: Env) -> None:
    package = env.tmp / "poisoned"
    shutil.copytree(env.packages[Variant.BETTER], package)
    meta = package / "meta.yaml"
    meta.write_text(meta.read_text().replace("framework:", "framework: 5\nold_framework:", 1))
    (package / "meta.yaml.sig").unlink()  # `sign` refuses such a manifest: unsigned development mode
    env.monkeypatch.setenv("ORCH_ALLOW_UNSIGNED", "1")
    inbox = env.tmp / "inbox"
    inbox.mkdir()
    _archive(package, inbox / "poisoned.tar.gz")
    watch, _ = daemon(env)
    watch.inbox, watch.inbox_quiet_s = inbox, 0.0
    notes = watch.scan_inbox()
    assert len(notes) == 1 and "refused poisoned.tar.gz" in notes[0] and "framework must map" in notes[0]
    assert not (inbox / "poisoned.tar.gz").exists() and (inbox / "rejected" / "poisoned.tar.gz").exists()
    assert env.store().versions() == [1]


def test_a_package_the_import_fails_on_with_a_bug_is_rejected_not_retried_forever_injected_bug(env: Env) -> None:
    inbox = env.tmp / "inbox"
    inbox.mkdir()
    _archive(env.packages[Variant.BETTER], inbox / "good.tar.gz")
    watch, registry = daemon(env)
    watch.inbox, watch.inbox_quiet_s = inbox, 0.0

    def bug(package: Path) -> None:
        raise KeyError("artifacts")

    env.monkeypatch.setattr(watch.orchestrator, "import_package", bug)
    notes = watch.scan_inbox()
    assert "unexpected KeyError" in notes[0] and (inbox / "rejected" / "good.tar.gz").exists()
    reason = (inbox / "rejected" / "good.tar.gz.reason").read_text()
    assert "unexpected KeyError while filing it" in reason
    assert registry.get_sample_value("orchestrator_watch_errors_total", {"model": "", "where": "inbox",
                                                                         "kind": "bug"}) == 1


def test_a_check_that_fails_with_a_bug_is_counted_and_watching_goes_on_injected_bug(env: Env) -> None:
    env.promote_better()
    watch, registry = daemon(env)
    watcher = watch.watchers[MODEL]
    real = watcher.tick
    failures = iter([ZeroDivisionError("float division by zero"), OSError(28, "No space left on device")])

    def flaky() -> list[Any]:
        error = next(failures, None)
        if error is not None:
            raise error
        return real()

    env.monkeypatch.setattr(watcher, "tick", flaky)
    ticks(env, watch, 4)
    labels = {"model": MODEL, "where": "check"}
    assert registry.get_sample_value("orchestrator_watch_errors_total", {**labels, "kind": "bug"}) == 1
    assert registry.get_sample_value("orchestrator_watch_errors_total", {**labels, "kind": "disk"}) == 1
    assert registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) == 2  # the two after


def test_one_daemon_watches_a_model_and_a_second_takes_over_when_it_stops(env: Env) -> None:
    env.promote_better()
    first, first_registry = daemon(env)
    second, second_registry = daemon(env)
    ticks(env, first, 2)
    ticks(env, second, 2)
    assert MODEL in second.waiting
    assert second_registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) is None
    assert first_registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) == 2
    assert "watch pid" in second.locks[MODEL].holder()
    first.locks[MODEL].release()  # as run() does when it stops
    ticks(env, second, 2)
    assert MODEL not in second.waiting
    assert second_registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) == 2


def test_a_lock_it_cannot_take_is_counted_and_the_other_models_are_watched(env: Env) -> None:
    env.promote_better()
    watch, registry = daemon(env)
    lock = watch.locks[MODEL].path
    lock.unlink(missing_ok=True)
    lock.symlink_to(env.tmp / "elsewhere")  # planted: refused, never followed
    ticks(env, watch, 3)
    assert registry.get_sample_value("orchestrator_watch_errors_total",
                                     {"model": MODEL, "where": "lock", "kind": "orchestrator"}) == 3
    assert not (env.tmp / "elsewhere").exists()
    lock.unlink()
    ticks(env, watch, 1)
    assert registry.get_sample_value("orchestrator_checks_total", {"model": MODEL}) == 1
