"""What the contract suite cannot cover cheaply: virtual time, injected faults, thousands of twins.

The twin's agreement with a real server is tests/contract/'s job; these run in memory only.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from orchestrator.errors import LoadFailed, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.protocol import IndexEntry, TritonAPI, TritonState
from orchestrator.triton.twin import TritonTwin, VirtualClock

MODEL = "m"
CONFIG = {"name": MODEL, "max_batch_size": 8, "backend": "python",
          "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": ["3"]}],
          "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": ["2"]}]}
X = np.ones((4, 3), np.float32)
READY, UNLOADING, UNAVAILABLE = TritonState.READY, TritonState.UNLOADING, TritonState.UNAVAILABLE


def policy(*versions: int, **changes: object) -> str:
    return json.dumps({**CONFIG, **changes, "version_policy": {"specific": {"versions": [str(v) for v in versions]}}})


def twin(clock: VirtualClock | None = None, versions: tuple[int, ...] = (1, 2), **options: object) -> TritonTwin:
    """A memory-only twin with ``versions`` of MODEL; version v answers Y = v everywhere."""
    clock = clock or VirtualClock()
    server = TritonTwin("unit", clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]
    server.set_config(MODEL, CONFIG)
    for v in versions:
        server.add_version(MODEL, v, behaviour=lambda inputs, v=v: {"Y": np.full((len(inputs["X"]), 2), v, np.float32)})
    return server


def states(server: TritonTwin) -> dict[int, TritonState]:
    return {v: e.state for v, e in server.states(MODEL).items()}


def served(server: TritonTwin) -> int:
    return server.infer(MODEL, {"X": X}, ["Y"]).version


def test_the_twin_has_every_method_of_the_protocol_with_the_same_parameters() -> None:
    for name, member in vars(TritonAPI).items():
        if callable(member) and not name.startswith("_"):
            assert inspect.signature(getattr(TritonTwin, name)).parameters.keys() == \
                inspect.signature(member).parameters.keys(), name
    assert TritonTwin("x").url == "twin://x"


def test_a_load_blocks_for_its_latency_and_dropped_versions_unload_after_theirs() -> None:
    clock = VirtualClock()
    server = twin(clock, load_latency_s=2.0, unload_latency_s=3.0)
    server.configure(MODEL, 2, load_latency_s=5.0)
    server.load(MODEL, policy(1))
    assert clock.now == 2.0
    server.load(MODEL, policy(1, 2))
    assert clock.now == 7.0  # only the added version loads; the kept one is not re-instantiated
    assert served(server) == 2
    server.load(MODEL, policy(2))
    assert clock.now == 7.0  # dropping takes no time for the caller
    assert states(server) == {1: UNLOADING, 2: READY} and served(server) == 2
    clock.sleep(2.9)
    assert states(server)[1] is UNLOADING
    clock.sleep(0.2)
    assert server.states(MODEL)[1] == IndexEntry(MODEL, 1, UNAVAILABLE, "unloaded")


def test_versions_load_side_by_side_and_a_config_change_reloads_every_one() -> None:
    clock = VirtualClock()
    server = twin(clock, versions=(1, 2, 3))
    for v, latency in ((1, 1.0), (2, 4.0), (3, 2.0)):
        server.configure(MODEL, v, load_latency_s=latency)
    server.load(MODEL, policy(1))
    server.load(MODEL, policy(1, 2, 3))
    assert clock.now == 1.0 + 4.0  # the slowest of the two added versions
    server.load(MODEL, policy(1, 2, 3, max_batch_size=4))
    assert clock.now == 5.0 + 4.0  # batching changed: all three reload


def test_wait_unloaded_in_virtual_time() -> None:
    clock = VirtualClock()
    server = twin(clock, unload_latency_s=3.0)
    server.load(MODEL, policy(1, 2))
    server.unload(MODEL)
    assert states(server) == {1: UNLOADING, 2: UNLOADING}
    assert server.wait_unloaded(MODEL, None, timeout_s=10.0)
    assert 3.0 <= clock.now < 3.1
    assert states(server) == {1: UNAVAILABLE, 2: UNAVAILABLE}
    with pytest.raises(TritonError):
        served(server)


def test_a_crashed_instance_fails_requests_and_never_finishes_unloading() -> None:
    clock = VirtualClock()
    server = twin(clock)
    server.load(MODEL, policy(1, 2))
    server.crash(MODEL, 2)
    with pytest.raises(TritonError, match="not healthy"):
        served(server)
    assert states(server)[2] is READY  # Triton only notices on the next request
    server.load(MODEL, policy(1))
    assert not server.wait_unloaded(MODEL, {2}, timeout_s=5.0)
    assert clock.now >= 5.0 and states(server)[2] is UNLOADING
    server.stop()
    server.start()  # only a restart clears it
    assert states(server) == {}


def test_a_failing_version_fails_the_load_and_the_old_set_serves_on() -> None:
    server = twin(versions=(1, 2, 3), unload_latency_s=1.0)
    server.configure(MODEL, 3, load_error="corrupt engine")
    server.load(MODEL, policy(1))
    with pytest.raises(LoadFailed, match="version 3 is at UNAVAILABLE state: corrupt engine"):
        server.load(MODEL, policy(1, 2, 3))
    assert states(server) == {1: READY, 2: UNLOADING, 3: UNAVAILABLE}
    assert server.states(MODEL)[3].reason == "corrupt engine"
    assert served(server) == 1


def test_a_behaviour_factory_that_raises_fails_that_versions_load() -> None:
    def factory(model: str, version: int, folder: object) -> None:
        raise RuntimeError(f"cannot open v{version}")

    server = TritonTwin("f", behaviour_for=factory)
    server.set_config(MODEL, CONFIG)
    server.add_version(MODEL, 1)
    with pytest.raises(LoadFailed, match="cannot open v1"):
        server.load(MODEL)


def test_request_faults() -> None:
    clock = VirtualClock()
    server = twin(clock, timeout_s=10.0)
    server.load(MODEL, policy(1, 2))
    server.configure(MODEL, 2, infer_error="injected fault: backend error")
    with pytest.raises(TritonError, match="injected fault"):
        served(server)
    assert server.inference_stats(MODEL) == (0, 0)  # failed requests are not counted
    assert server.infer(MODEL, {"X": X}, ["Y"], version=1).outputs["Y"][0, 0] == 1.0
    server.configure(MODEL, 2, infer_error=None, hung=True)
    with pytest.raises(TritonUnreachable):
        served(server)
    assert clock.now == 10.0  # the client gave up after its timeout
    assert server.inference_stats(MODEL)[0] == 1


def test_default_outputs_are_zeros_shaped_by_the_config() -> None:
    server = TritonTwin("zeros")
    server.set_config(MODEL, {**CONFIG, "output": [{"name": "Y", "data_type": "TYPE_INT64", "dims": ["2", "5"]}]})
    server.add_version(MODEL, 1)
    server.load(MODEL)  # no version_policy: latest 1
    result = server.infer(MODEL, {"X": X}, ["Y"])
    assert result.outputs["Y"].shape == (4, 2, 5) and result.outputs["Y"].dtype == np.int64
    assert not result.outputs["Y"].any()


def test_without_a_repository_a_model_needs_a_config_and_its_versions() -> None:
    server = TritonTwin("bare")
    server.add_version(MODEL, 1)
    with pytest.raises(LoadFailed):
        server.load(MODEL)  # no config known
    server.load(MODEL, policy(1))
    assert states(server) == {1: READY}
    server.remove_version(MODEL, 1)
    server.add_version(MODEL, 2)
    with pytest.raises(LoadFailed, match="at least one version"):
        server.load(MODEL)  # the last config sticks: v1's folder is gone, so nothing is selected
    assert served(server) == 1  # a failed load changes nothing
    server.unload(MODEL)  # it goes with an unload: then the model's own config (latest 1) counts
    server.set_config(MODEL, CONFIG)
    server.load(MODEL)
    assert states(server)[2] is READY


def test_clients_of_one_server_share_it_and_restart_keeps_only_start_models() -> None:
    server = twin(admin_key="secret", key="secret", load_models=(MODEL,))
    server.start()  # without a repository, start models load once registered
    assert states(server) == {2: READY}  # config without version_policy: latest 1
    anonymous = server.with_key(None)
    with pytest.raises(TritonForbidden):
        anonymous.index()
    assert anonymous.infer(MODEL, {"X": X}, ["Y"]).version == 2
    server.load(MODEL, policy(1, 2))
    server.update_trace_settings(MODEL, {"trace_rate": "5"})
    anonymous.stop()
    with pytest.raises(TritonUnreachable):
        server.index()
    assert not server.is_live()
    server.start()
    assert states(server) == {2: READY}
    assert server.trace_settings(MODEL)["trace_rate"] == "1000"


def test_the_key_locks_tracing_as_it_locks_the_repository_and_nothing_without_a_key() -> None:
    server = twin(admin_key="secret", key="secret")
    server.load(MODEL)
    for client in (server.with_key(None), server.with_key("wrong")):
        for call in (client.trace_settings, lambda c=client: c.trace_settings("no-such-model"),
                     lambda c=client: c.update_trace_settings(MODEL, {"trace_rate": "5"})):
            with pytest.raises(TritonForbidden, match=r"^trace settings"):
                call()
        assert client.model_ready(MODEL) and client.infer(MODEL, {"X": X}, ["Y"]).version == 2
        assert client.inference_stats(MODEL)[0] > 0  # statistics are not locked
    assert server.trace_settings(MODEL)["trace_rate"] == "1000"
    open_server = twin()  # started without a key: nothing is locked
    open_server.load(MODEL)
    assert open_server.with_key(None).update_trace_settings(MODEL, {"trace_rate": "5"})["trace_rate"] == "5"
    assert open_server.with_key("any").index()


def test_two_thousand_twins_in_one_process() -> None:
    fleet = []
    for n in range(2000):
        server = TritonTwin(f"device-{n}")
        server.set_config(MODEL, CONFIG)
        server.add_version(MODEL, 1)
        server.load(MODEL)
        fleet.append(server)
    results = [server.infer(MODEL, {"X": X[:1]}, ["Y"]) for server in fleet]
    assert {r.version for r in results} == {1}
    assert all(r.outputs["Y"].shape == (1, 2) for r in results)
    assert sum(server.inference_stats(MODEL)[0] for server in fleet) == 2000
