"""The watch daemon on the twin: Triton down is reported and never rolled back; when it answers
again every model is reconciled to the disk and watched afresh (mirrors the integration test's restart)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from orchestrator.daemons.watch import Watch
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
