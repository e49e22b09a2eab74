"""Status on the twin: what the disk says, what Triton holds, and whether they agree."""

from __future__ import annotations

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
