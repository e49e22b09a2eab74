"""Status on the twin: what the disk says, what Triton holds, and whether they agree."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from orchestrator.cli.views import probe_budget_text, status_table
from orchestrator.usecases.status import ProbeBudget, probe_budget

from .conftest import MODEL, Env


def test_status_after_a_promote(env: Env) -> None:
    env.promote_better()
    [status] = env.orchestrator().status(MODEL)
    assert (status.model, status.served, status.fallback, status.resident) == (MODEL, 2, 1, [1, 2])
    assert (status.triton_reachable, status.in_sync, status.interrupted, status.triton_error) == (True, True, None, "")
    rows = {row.version: (row.status, row.resident, row.triton_state) for row in status.versions}
    assert rows == {1: ("verified", True, "READY"), 2: ("verified", True, "READY")}
    assert status.as_dict()["served"] == 2


def test_a_triton_restarted_without_the_model_is_out_of_sync_until_reconciled(env: Env) -> None:
    env.promote_better()
    env.twin = env.make_twin(load_models=())  # a new server, started without --load-model
    [status] = env.orchestrator().status(MODEL)
    assert (status.served, status.triton_reachable, status.in_sync) == (2, True, False)
    assert {row.version: row.triton_state for row in status.versions} == {1: "", 2: ""}  # known, never loaded
    assert env.orchestrator().reconcile() == ["loaded [1, 2] into Triton (it held [])"]
    last = env.last()
    assert (last.action, last.result, last.from_version, last.to_version) == ("reconcile", "succeeded", None, 2)
    assert env.orchestrator().status(MODEL)[0].in_sync
    assert env.served_by_twin() == 2
    assert env.backends.loads[-2:] == [(MODEL, 1), (MODEL, 2)]


def test_a_model_unloaded_behind_our_back_is_out_of_sync(env: Env) -> None:
    env.twin.unload(MODEL)
    [status] = env.orchestrator().status(MODEL)
    assert (status.triton_reachable, status.in_sync) == (True, False)
    assert status.versions[0].triton_state == "UNAVAILABLE"


def test_status_with_triton_stopped_still_shows_the_disk(env: Env) -> None:
    env.twin.stop()
    [status] = env.orchestrator().status(MODEL)
    assert (status.served, status.resident, status.triton_reachable, status.in_sync) == (1, [1], False, False)
    assert "Triton at twin://unit is unreachable" in status.triton_error
    assert [row.triton_state for row in status.versions] == [None]  # null in JSON: not known, not a state


def test_status_with_a_refused_admin_key_still_shows_the_disk(env: Env) -> None:
    [status] = env.orchestrator(admin_key="wrong-key").status(MODEL)
    assert (status.served, status.triton_reachable, status.in_sync) == (1, False, False)
    assert "(403)" in status.triton_error and "wrong-key" not in status.triton_error


def test_status_shows_the_probe_budget_of_a_bake_after_a_switch_then_the_steady_share(env: Env) -> None:
    env.set_policy("watch", probe_budget=0.01, bake_budget=0.2, bake_s=300)
    [before] = env.orchestrator().status(MODEL)
    assert before.probe_budget == ProbeBudget("steady", 0.01, 0.01, 0.0)  # no switch on record
    assert "probe budget  1% of device time (steady)" in status_table(before)
    env.promote_better()
    [status] = env.orchestrator().status(MODEL)
    budget = status.probe_budget
    assert budget is not None and (budget.phase, budget.share, budget.steady_share) == ("bake", 0.2, 0.01)
    assert 290 < budget.bake_left_s <= 300
    assert "probe budget  20% of device time (bake, 5 min left), then 1%" in status_table(status)
    assert status.as_dict()["probe_budget"] == {"phase": "bake", "share": 0.2, "steady_share": 0.01,
                                                "bake_left_s": budget.bake_left_s, "sharers": 1}
    switched = datetime.fromisoformat(env.last("promote").time).timestamp()
    later = probe_budget(env.store().snapshot(), now_unix=switched + 250)
    assert later == ProbeBudget("bake", 0.2, 0.01, 50.0)
    assert probe_budget_text(later) == "20% of device time (bake, 50 s left), then 1%"
    assert probe_budget(env.store().snapshot(), now_unix=switched + 300) == ProbeBudget("steady", 0.01, 0.01, 0.0)
    # A daemon watching ten models splits the device's steady share among them; the bake stays the model's own.
    shared = probe_budget(env.store().snapshot(), now_unix=switched + 250, sharers=10)
    assert shared == ProbeBudget("bake", 0.2, 0.001, 50.0, 10)
    assert probe_budget_text(shared) == \
        "20% of device time (bake, 50 s left), then 0.1%, the device's 1% among 10 models"
    steady = probe_budget(env.store().snapshot(), now_unix=switched + 300, sharers=10)
    assert probe_budget_text(steady) == "0.1% of device time (steady, the device's 1% among 10 models)"


def test_status_says_when_no_probes_run_after_the_bake_and_leaves_the_budget_out_of_a_broken_policy(
        env: Env) -> None:
    env.set_policy("watch", probe_budget=0, bake_s=0)
    env.promote_better()
    [status] = env.orchestrator().status(MODEL)
    assert "probe budget  0% (no probes) of device time (steady)" in status_table(status)
    (env.state / MODEL / "policy.yaml").write_text("watch: [not, a, mapping]\n")
    assert probe_budget(env.store().snapshot()) is None
    assert "probe budget" not in status_table(replace(status, probe_budget=None))
