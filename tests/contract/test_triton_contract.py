"""What the orchestrator relies on from Triton, asserted identically on the real server and the twin.

A failure on ``real`` means the orchestrator's picture of Triton is wrong; a failure on
``twin`` alone means the twin drifted from the server and must be fixed to match it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
from google.protobuf import json_format, text_format

from orchestrator.errors import LoadFailed, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.protocol import ExecutionStats, IndexEntry, InferenceResult, TritonAPI, TritonState

from .conftest import (
    BROKEN,
    CANDIDATE,
    FAILING,
    GOOD,
    IMAGES,
    MODEL,
    NEW,
    SPARE,
    WAIT_S,
    Backend,
    model_config,
    policy,
)

READY, UNLOADING, UNAVAILABLE = TritonState.READY, TritonState.UNLOADING, TritonState.UNAVAILABLE


def infer(client: TritonAPI, version: int | None = None, model: str = MODEL,
          images: np.ndarray = IMAGES) -> InferenceResult:
    return client.infer(model, {"IMAGE": images}, ["LOGITS"], version=version)


def state(client: TritonAPI, version: int) -> TritonState | None:
    entry = client.states(MODEL).get(version)
    return entry.state if entry else None


def counted(triton: TritonAPI, model: str, version: int, enough) -> ExecutionStats:  # type: ignore[no-untyped-def]
    """Triton counts a request after answering it: read a version's stats again until ``enough`` holds (5 s)."""
    deadline = time.monotonic() + 5.0
    stats = triton.execution_stats(model)[version]
    while not enough(stats) and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = triton.execution_stats(model)[version]
    return stats


def assert_answered_error(call) -> TritonError:  # type: ignore[no-untyped-def]
    """Triton answered with an error: neither unreachable nor a refused key."""
    with pytest.raises(TritonError) as caught:
        call()
    assert not isinstance(caught.value, TritonUnreachable | TritonForbidden), caught.value
    return caught.value


def test_unversioned_requests_go_to_the_highest_ready_version(triton: TritonAPI,
                                                               expected: dict[int, np.ndarray]) -> None:
    assert infer(triton).version == GOOD
    triton.load(MODEL, policy(GOOD, NEW))
    result = infer(triton)
    assert (result.model, result.version) == (MODEL, NEW)
    logits = result.outputs["LOGITS"]
    assert logits.shape == (len(IMAGES), 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected[NEW], rtol=1e-5, atol=1e-5)
    older = infer(triton, version=GOOD)
    assert older.version == GOOD
    np.testing.assert_allclose(older.outputs["LOGITS"], expected[GOOD], rtol=1e-5, atol=1e-5)


def test_an_added_version_takes_traffic_once_loaded_and_no_request_fails(backend: Backend,
                                                                        triton: TritonAPI) -> None:
    answers: list[tuple[float, float, int | None, str]] = []  # (sent, answered, version, error), other clients

    def send() -> None:
        client = backend.client()
        sent = time.monotonic()
        try:
            version, error = infer(client, images=IMAGES[:1]).version, ""
        except Exception as exc:  # every failure is data for the assertion
            version, error = None, str(exc)
        answers.append((sent, time.monotonic(), version, error))

    def traffic() -> None:
        while not stop.is_set():
            send()
            time.sleep(0.005)

    stop = threading.Event()
    threads = [threading.Thread(target=traffic, daemon=True), threading.Timer(0.05 + 0.1, send)]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()  # one request sent well inside the load
    began = time.monotonic()
    triton.load(MODEL, policy(GOOD, NEW))
    ended = time.monotonic()
    assert infer(triton).version == NEW
    time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(10)

    assert [error for *_, error in answers if error] == []
    assert {v for _, done, v, _ in answers if done < began} == {GOOD}
    assert {v for sent, _, v, _ in answers if sent > ended} == {NEW}
    assert {v for *_, v, _ in answers} == {GOOD, NEW}
    # The old set served throughout: no request failed, none was answered by anything else.
    assert any(began + 0.02 < sent < ended - 0.02 for sent, *_ in answers), "no request was sent during the load"
    assert state(triton, GOOD) is READY


def test_removing_the_highest_version_routes_back_to_the_lower(triton: TritonAPI) -> None:
    triton.load(MODEL, policy(GOOD, NEW))
    assert infer(triton).version == NEW
    triton.load(MODEL, policy(GOOD))
    assert infer(triton).version == GOOD  # at once: the dropped version no longer takes requests
    assert state(triton, NEW) is UNLOADING  # but it still holds its files
    assert triton.wait_unloaded(MODEL, {NEW}, WAIT_S)
    assert triton.states(MODEL)[NEW] == IndexEntry(MODEL, NEW, UNAVAILABLE, "unloaded")
    assert state(triton, GOOD) is READY
    assert_answered_error(lambda: infer(triton, version=NEW))


def test_index_lists_every_model_with_its_versions(triton: TritonAPI) -> None:
    entries = triton.index()
    assert IndexEntry(MODEL, GOOD, READY, "") in entries
    assert IndexEntry(SPARE, None, TritonState.UNKNOWN, "") in entries  # in the repository, never loaded
    # Versions the control API never touched are not listed; touched ones keep a row.
    assert all(e.state is UNAVAILABLE for e in entries if e.name == MODEL and e.version != GOOD)


def test_version_policy_selects_among_the_version_folders(triton: TritonAPI) -> None:
    triton.load(MODEL, policy(GOOD, 9))  # a listed version without a folder is ignored
    assert 9 not in triton.states(MODEL)
    assert infer(triton).version == GOOD
    with pytest.raises(LoadFailed) as none_available:
        triton.load(MODEL, policy(9))
    assert none_available.value.model == MODEL
    # No version_policy means latest 1: the highest folder, here the one that cannot load.
    with pytest.raises(LoadFailed) as latest:
        triton.load(MODEL, json_format.MessageToJson(model_config(MODEL, None)))
    assert f"version {BROKEN}" in latest.value.reason
    for model, config in ((MODEL, "{not json"), (MODEL, policy(GOOD, model=SPARE)), ("no-such-model", None)):
        with pytest.raises(LoadFailed):  # unreadable, naming another model, no such folder
            triton.load(model, config)
    triton.unload("no-such-model")  # unloading what is not there is no error
    assert infer(triton).version == GOOD and state(triton, NEW) is not READY


def test_a_failed_load_keeps_the_old_set_serving(triton: TritonAPI, expected: dict[int, np.ndarray]) -> None:
    with pytest.raises(LoadFailed) as caught:
        triton.load(MODEL, policy(GOOD, NEW, BROKEN))
    assert caught.value.model == MODEL and f"version {BROKEN}" in caught.value.reason
    assert "\n" not in caught.value.reason and "At:" not in caught.value.reason  # the reason, not the traceback
    states = triton.states(MODEL)
    assert states[GOOD].state is READY
    assert states[BROKEN].state is UNAVAILABLE and states[BROKEN].reason and "\n" not in states[BROKEN].reason
    assert not triton.model_ready(MODEL, BROKEN)
    assert states[NEW].state in (UNLOADING, UNAVAILABLE)  # loaded with it, then discarded: all or nothing
    result = infer(triton)
    assert result.version == GOOD
    np.testing.assert_allclose(result.outputs["LOGITS"], expected[GOOD], rtol=1e-5, atol=1e-5)
    assert_answered_error(lambda: infer(triton, version=BROKEN))
    assert triton.wait_unloaded(MODEL, {NEW}, WAIT_S)
    triton.load(MODEL, policy(GOOD))
    assert triton.states(MODEL)[BROKEN].state is UNAVAILABLE  # the failure stays listed with its reason
    assert triton.states(MODEL)[BROKEN].reason


def test_requests_to_what_is_not_loaded_are_errors(triton: TritonAPI) -> None:
    assert_answered_error(lambda: infer(triton, version=NEW))
    assert_answered_error(lambda: infer(triton, version=99))
    assert_answered_error(lambda: infer(triton, model="no-such-model"))
    assert_answered_error(lambda: infer(triton, model=SPARE))
    assert triton.model_ready(MODEL) and triton.model_ready(MODEL, GOOD)
    assert not triton.model_ready(MODEL, NEW)
    assert not triton.model_ready("no-such-model") and not triton.model_ready(SPARE)


def test_readiness_per_version_follows_the_loaded_set(triton: TritonAPI) -> None:
    assert [triton.model_ready(MODEL, v) for v in (GOOD, NEW, BROKEN, 99)] == [True, False, False, False]
    triton.load(MODEL, policy(GOOD, NEW))
    assert [triton.model_ready(MODEL, v) for v in (GOOD, NEW, 99)] == [True, True, False]
    triton.load(MODEL, policy(NEW))
    assert triton.model_ready(MODEL) and not triton.model_ready(MODEL, GOOD)  # dropped: at once not ready
    assert triton.model_ready(MODEL, NEW)


def test_a_name_with_url_characters_is_one_unknown_model(triton: TritonAPI) -> None:
    """Quoted, such a name can neither reach another model nor another endpoint. Triton does not
    decode the name it is sent (measured: "a%20b" is looked up as is), so no such model is reachable."""
    for name in ("spare/1", "classifier/versions/1", "spare?x=1", "spare#x", "spare copy", "spare%20copy"):
        assert not triton.model_ready(name) and not triton.model_ready(name, GOOD)
        with pytest.raises(LoadFailed) as caught:
            triton.load(name)
        assert caught.value.model == name
        assert_answered_error(lambda name=name: triton.inference_stats(name))
        assert_answered_error(lambda name=name: triton.execution_stats(name))
        assert_answered_error(lambda name=name: triton.trace_settings(name))
        triton.unload(name)  # unloading what is not there is no error
    assert state(triton, GOOD) is READY and not triton.model_ready(SPARE)


def test_requests_the_config_refuses_are_errors_and_not_counted(triton: TritonAPI) -> None:
    before, _ = triton.inference_stats(MODEL)
    assert_answered_error(lambda: triton.infer(MODEL, {"IMAGE": IMAGES}, ["NO_SUCH_OUTPUT"]))
    assert_answered_error(lambda: infer(triton, images=IMAGES[:, :1]))  # wrong shape
    assert_answered_error(lambda: infer(triton, images=np.concatenate([IMAGES] * 3)))  # batch 12 > max 8
    assert triton.inference_stats(MODEL)[0] == before


def test_one_client_serves_threads_in_turn(triton: TritonAPI) -> None:
    """The fleet agent's handlers and install jobs use one client from a pool's threads, one at a time. The real
    client's gevent sockets belong to the thread that made them: a second thread failed with greenlet.error."""
    expected = infer(triton).outputs["LOGITS"]
    answers: list[object] = []

    def other_thread() -> None:
        try:
            answers.append(infer(triton).outputs["LOGITS"])
        except Exception as exc:  # the failure is what is asserted on
            answers.append(exc)

    for _ in range(2):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert [type(a) for a in answers] == [np.ndarray, np.ndarray], answers
    assert all(np.array_equal(a, expected) for a in answers)  # type: ignore[arg-type]
    np.testing.assert_array_equal(infer(triton).outputs["LOGITS"], expected)  # and the first thread's still works


def test_inference_stats_count_successful_requests(triton: TritonAPI) -> None:
    count, total_ns = triton.inference_stats(MODEL)
    for _ in range(3):
        infer(triton)
    infer(triton, version=GOOD)
    after, after_ns = triton.inference_stats(MODEL)
    assert after == count + 4 and after_ns > total_ns
    assert_answered_error(lambda: triton.inference_stats("no-such-model"))


def test_execution_stats_count_each_versions_executions_and_compute_time(triton: TritonAPI) -> None:
    """What the watcher's probe budget is measured with: one request of 4 images is one execution of 4
    inferences, its compute time part of the request's time inside Triton; a refused request is not counted."""
    before = triton.execution_stats(MODEL)
    assert set(before) == {GOOD}
    for _ in range(3):
        infer(triton)
    assert_answered_error(lambda: infer(triton, images=IMAGES[:, :1]))
    was = before[GOOD]
    now = counted(triton, MODEL, GOOD, lambda s: s.executions - was.executions >= 3)
    after = triton.execution_stats(MODEL)
    assert (now.executions - was.executions, now.inferences - was.inferences) == (3, 3 * len(IMAGES))
    assert now.success_count - was.success_count == 3
    assert 0 < now.compute_ns - was.compute_ns <= now.success_ns - was.success_ns
    assert sum(s.success_count for s in after.values()) == triton.inference_stats(MODEL)[0]
    triton.load(MODEL, policy(GOOD, NEW))
    both = triton.execution_stats(MODEL)
    assert set(both) == {GOOD, NEW} and both[GOOD] == now  # each version its own, a fresh one from zero
    assert both[NEW] == ExecutionStats()
    infer(triton)  # to the highest READY version
    assert counted(triton, MODEL, NEW, lambda s: s.executions >= 1).executions == 1
    assert_answered_error(lambda: triton.execution_stats("no-such-model"))


def test_execution_stats_count_the_requests_the_model_answered_with_an_error(triton: TritonAPI) -> None:
    """What the fleet agent reports as a version's errors: a request the model raised on is a failed request
    of that version (``fail_count``, its time in ``fail_ns``, one execution of no inferences), not a success;
    one Triton refuses before the model runs is neither."""
    try:
        triton.load(FAILING)
        assert triton.execution_stats(FAILING) == {GOOD: ExecutionStats()}
        for _ in range(2):
            assert_answered_error(lambda: infer(triton, model=FAILING))
        assert_answered_error(lambda: infer(triton, model=FAILING, images=IMAGES[:, :1]))  # refused: not counted
        failed = counted(triton, FAILING, GOOD, lambda s: s.requests >= 2)
        assert (failed.success_count, failed.fail_count, failed.requests) == (0, 2, 2)
        assert (failed.executions, failed.inferences, failed.success_ns) == (2, 0, 0) and failed.fail_ns > 0
        assert triton.inference_stats(FAILING)[0] == 0  # successes only
    finally:
        triton.unload(FAILING)
        assert triton.wait_unloaded(FAILING, None, WAIT_S)


def test_unload_then_wait_unloaded(triton: TritonAPI) -> None:
    triton.load(MODEL, policy(GOOD, NEW))
    triton.unload(MODEL)
    assert triton.wait_unloaded(MODEL, None, WAIT_S)
    states = triton.states(MODEL)
    assert states[GOOD] == IndexEntry(MODEL, GOOD, UNAVAILABLE, "unloaded")
    assert states[NEW] == IndexEntry(MODEL, NEW, UNAVAILABLE, "unloaded")
    assert_answered_error(lambda: infer(triton))
    assert not triton.model_ready(MODEL)
    assert_answered_error(lambda: triton.inference_stats(MODEL))
    assert_answered_error(lambda: triton.execution_stats(MODEL))
    assert_answered_error(lambda: triton.trace_settings(MODEL))  # per-model settings need a loaded model
    # The unload dropped the last load's config: a plain load reads config.pbtxt again (v1 only).
    triton.load(MODEL)
    assert infer(triton).version == GOOD and state(triton, NEW) is UNAVAILABLE


def test_a_candidate_entry_serves_a_version_through_a_symlink(backend: Backend, triton: TritonAPI,
                                                              expected: dict[int, np.ndarray]) -> None:
    entry = backend.repository / CANDIDATE
    entry.mkdir()
    try:
        (entry / "config.pbtxt").write_text(text_format.MessageToString(model_config(CANDIDATE, (NEW,))))
        os.symlink(os.path.join("..", MODEL, str(NEW)), entry / str(NEW))
        triton.load(CANDIDATE)
        result = infer(triton, model=CANDIDATE)
        assert (result.model, result.version) == (CANDIDATE, NEW)
        np.testing.assert_allclose(result.outputs["LOGITS"], expected[NEW], rtol=1e-5, atol=1e-5)
        assert infer(triton).version == GOOD  # production is untouched
        triton.unload(CANDIDATE)
        assert triton.wait_unloaded(CANDIDATE, None, WAIT_S)
    finally:
        shutil.rmtree(entry)
    assert CANDIDATE not in {e.name for e in triton.index()}  # its folder gone, it leaves the index


def test_the_locked_api_refuses_a_missing_or_wrong_key(backend: Backend, triton: TritonAPI) -> None:
    triton.update_trace_settings(MODEL, {"trace_rate": "7"})
    try:
        for key in (None, "wrong-key"):
            client = backend.client(key)
            for call in (client.index, client.require_live, lambda c=client: c.states(MODEL),
                         lambda c=client: c.load(MODEL, policy(GOOD, NEW)), lambda c=client: c.unload(MODEL),
                         client.trace_settings, lambda c=client: c.trace_settings(MODEL),
                         lambda c=client: c.trace_settings("no-such-model"),  # refused before the model is looked up
                         lambda c=client: c.update_trace_settings(None, {"trace_rate": "1"}),
                         lambda c=client: c.update_trace_settings(MODEL, {"trace_level": ["TENSORS"]})):
                with pytest.raises(TritonForbidden) as caught:
                    call()
                assert caught.value.url == client.url
                assert ("the admin key sent was refused" if key else "no admin key was sent") in str(caught.value)
            # Not in control.RESTRICTED_APIS: health, readiness, inference, statistics.
            assert client.is_live() and client.model_ready(MODEL, GOOD)
            assert infer(client).version == GOOD
            assert client.inference_stats(MODEL)[0] > 0
            assert client.execution_stats(MODEL)[GOOD].executions > 0
        assert state(triton, GOOD) is READY and state(triton, NEW) is not READY  # nothing changed
        assert triton.trace_settings(MODEL)["trace_rate"] == "7"  # neither did tracing
        assert triton.trace_settings(MODEL)["trace_level"] == triton.trace_settings()["trace_level"]
    finally:
        triton.update_trace_settings(MODEL, {"trace_rate": None})


def test_require_live_checks_the_key(backend: Backend, triton: TritonAPI) -> None:
    triton.require_live()
    for key in ("wrong-key", None):
        with pytest.raises(TritonForbidden):
            backend.client(key).require_live()


def test_trace_settings_per_model(triton: TritonAPI) -> None:
    server_rate = triton.trace_settings()["trace_rate"]
    assert isinstance(server_rate, str) and isinstance(triton.trace_settings()["trace_level"], list)
    updated = triton.update_trace_settings(MODEL, {"trace_rate": "7"})  # with the key: tracing is locked
    assert updated["trace_rate"] == "7"
    assert triton.trace_settings(MODEL)["trace_rate"] == "7"
    assert triton.trace_settings()["trace_rate"] == server_rate  # the server-wide value is untouched
    assert_answered_error(lambda: triton.update_trace_settings(MODEL, {"trace_rate": 7}))  # strings only
    assert_answered_error(lambda: triton.update_trace_settings(MODEL, {"trace_level": "TENSORS"}))  # a list
    assert_answered_error(lambda: triton.update_trace_settings(MODEL, {"trace_file": "/tmp/elsewhere.json"}))
    assert_answered_error(lambda: triton.trace_settings("no-such-model"))
    assert triton.trace_settings(MODEL)["trace_rate"] == "7"  # a refused update changed nothing
    reset = triton.update_trace_settings(MODEL, {"trace_rate": None})  # None: back to the server-wide value
    assert reset["trace_rate"] == server_rate


def test_server_wide_trace_settings(triton: TritonAPI) -> None:
    before = triton.trace_settings()
    try:
        updated = triton.update_trace_settings(None, {"trace_rate": "5", "log_frequency": "3"})
        assert (updated["trace_rate"], updated["log_frequency"]) == ("5", "3")
        assert triton.trace_settings()["trace_rate"] == "5"
        assert triton.trace_settings(MODEL)["trace_rate"] == "5"  # a model without its own value follows
        assert triton.update_trace_settings(None, {"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
        assert_answered_error(lambda: triton.update_trace_settings(None, {"trace_count": "many"}))
        assert triton.update_trace_settings(None, {"no_such_setting": "1"})["trace_rate"] == "5"  # ignored
    finally:
        triton.update_trace_settings(None, {"trace_rate": str(before["trace_rate"]),
                                            "log_frequency": str(before["log_frequency"])})
    assert triton.trace_settings() == before


def test_a_stopped_server_is_unreachable_and_restarts_with_only_its_start_models(backend: Backend,
                                                                                  triton: TritonAPI) -> None:
    triton.load(MODEL, policy(GOOD, NEW))
    backend.stop()
    try:
        assert not triton.is_live()
        for call in (triton.index, triton.require_live, triton.trace_settings, lambda: triton.load(MODEL),
                     lambda: triton.unload(MODEL), lambda: infer(triton), lambda: triton.model_ready(MODEL),
                     lambda: triton.model_ready(MODEL, GOOD), lambda: triton.inference_stats(MODEL),
                     lambda: triton.execution_stats(MODEL),
                     lambda: triton.states(MODEL), lambda: triton.trace_settings(MODEL),
                     lambda: triton.update_trace_settings(MODEL, {"trace_rate": "5"}),
                     lambda: triton.wait_unloaded(MODEL, None, 1.0), backend.client(None).index):
            with pytest.raises(TritonUnreachable) as caught:
                call()
            assert caught.value.url == triton.url
    finally:
        backend.start()
    assert triton.is_live()
    assert triton.states(MODEL) == {GOOD: IndexEntry(MODEL, GOOD, READY, "")}  # the restart forgot v2
    assert infer(triton).version == GOOD
