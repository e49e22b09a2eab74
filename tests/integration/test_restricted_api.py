"""What the admin key locks on a real Triton (2.51), endpoint by endpoint, over HTTP and gRPC.

The twin models only the model-repository and trace APIs (tests/contract/ covers those); the
logging and shared-memory APIs, which the orchestrator never calls but a client on the device
could abuse, are proved here: refused without the key, and working with it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from multiprocessing import shared_memory

import pytest
import requests

from orchestrator.triton.control import ADMIN_HEADER, RESTRICTED_APIS
from orchestrator.triton.embedded import EmbeddedTriton

from .conftest import ADMIN_KEY, MODEL, ROOT

pytestmark = pytest.mark.triton

REFUSED = {"error": "This API is restricted, expecting header 'admin-key'"}  # Triton 2.51's answer, with 403
# (method, path, body) per Triton category; the keyed calls change nothing (an empty update, no regions).
LOCKED = {
    "model-repository": [("POST", "/v2/repository/index", {})],
    "trace": [("GET", "/v2/trace/setting", None), ("POST", "/v2/trace/setting", {}),
              ("GET", f"/v2/models/{MODEL}/trace/setting", None), ("POST", f"/v2/models/{MODEL}/trace/setting", {})],
    "logging": [("GET", "/v2/logging", None), ("POST", "/v2/logging", {})],
    "shared-memory": [("GET", "/v2/systemsharedmemory/status", None), ("POST", "/v2/systemsharedmemory/unregister", {}),
                      ("GET", "/v2/cudasharedmemory/status", None), ("POST", "/v2/cudasharedmemory/unregister", {})],
}
OPEN = [("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2"), ("GET", f"/v2/models/{MODEL}"),
        ("GET", f"/v2/models/{MODEL}/ready"), ("GET", f"/v2/models/{MODEL}/config"),
        ("GET", f"/v2/models/{MODEL}/stats"), ("GET", "/v2/models/stats")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    tmp = tmp_path_factory.mktemp("restricted")
    shutil.copytree(ROOT / "model_repository", tmp / "model_repository")
    triton = EmbeddedTriton(tmp / "model_repository", tmp / "triton", load_models=(MODEL,), admin_key=ADMIN_KEY)
    triton.start()
    try:
        yield triton
    except BaseException:
        print(f"--- tritonserver log tail ---\n{triton.log_tail()}")
        raise
    finally:
        triton.kill()  # throwaway: a clean stop takes 3 s


def call(server: EmbeddedTriton, method: str, path: str, body: object = None,
         key: str | None = None) -> requests.Response:
    headers = {ADMIN_HEADER: key} if key else {}
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=10)


def test_the_locked_categories_are_the_ones_the_project_restricts() -> None:
    assert set(LOCKED) == set(RESTRICTED_APIS)


@pytest.mark.parametrize(("api", "method", "path", "body"),
                         [(api, *request) for api, requests_ in LOCKED.items() for request in requests_])
def test_a_locked_endpoint_needs_the_key(server: EmbeddedTriton, api: str, method: str, path: str,
                                         body: object) -> None:
    for key in (None, "wrong-key"):
        refused = call(server, method, path, body, key)
        assert (refused.status_code, refused.json()) == (403, REFUSED), (api, key)
    answered = call(server, method, path, body, ADMIN_KEY)
    assert answered.status_code == 200, answered.text


@pytest.mark.parametrize(("method", "path"), OPEN)
def test_health_metadata_config_and_statistics_stay_open(server: EmbeddedTriton, method: str, path: str) -> None:
    assert call(server, method, path).status_code == 200


def test_inference_stays_open(server: EmbeddedTriton) -> None:
    body = {"inputs": [{"name": "IMAGE", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    answered = call(server, "POST", f"/v2/models/{MODEL}/infer", body)
    assert answered.status_code == 200 and answered.json()["model_name"] == MODEL


def test_log_settings_change_only_with_the_key(server: EmbeddedTriton) -> None:
    assert call(server, "POST", "/v2/logging", {"log_verbose_level": 1}).status_code == 403
    assert call(server, "GET", "/v2/logging", key=ADMIN_KEY).json()["log_verbose_level"] == 0  # unchanged
    try:
        changed = call(server, "POST", "/v2/logging", {"log_verbose_level": 1}, ADMIN_KEY)
        assert changed.status_code == 200 and changed.json()["log_verbose_level"] == 1
    finally:
        call(server, "POST", "/v2/logging", {"log_verbose_level": 0}, ADMIN_KEY)


def test_a_shared_memory_region_registers_only_with_the_key(server: EmbeddedTriton) -> None:
    region = shared_memory.SharedMemory(create=True, size=64)  # a real /dev/shm region another process made
    name, register = "orch-test-region", {"key": f"/{region.name}", "offset": 0, "byte_size": 64}
    path = f"/v2/systemsharedmemory/region/{name}"
    try:
        assert call(server, "POST", f"{path}/register", register).status_code == 403
        assert call(server, "GET", "/v2/systemsharedmemory/status", key=ADMIN_KEY).json() == []  # not registered
        assert call(server, "POST", f"{path}/register", register, ADMIN_KEY).status_code == 200
        status = call(server, "GET", "/v2/systemsharedmemory/status", key=ADMIN_KEY).json()
        assert [(r["name"], r["key"], int(r["byte_size"])) for r in status] == [(name, f"/{region.name}", 64)]
        assert call(server, "POST", f"{path}/unregister", {}).status_code == 403  # nor can anyone drop it
        assert call(server, "POST", f"{path}/unregister", {}, ADMIN_KEY).status_code == 200
        assert call(server, "GET", "/v2/systemsharedmemory/status", key=ADMIN_KEY).json() == []
    finally:
        call(server, "POST", "/v2/systemsharedmemory/unregister", {}, ADMIN_KEY)
        region.close()
        region.unlink()


def test_grpc_locks_the_same_categories(server: EmbeddedTriton) -> None:
    import tritonclient.grpc as grpcclient  # noqa: PLC0415 - ~350 ms, this test only
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    locked = {"model-repository": client.get_model_repository_index, "trace": client.get_trace_settings,
              "logging": client.get_log_settings, "shared-memory": client.get_system_shared_memory_status}
    assert set(locked) == set(RESTRICTED_APIS)
    keyed = {"triton-grpc-protocol-admin-key": ADMIN_KEY}
    try:
        for api, method in locked.items():
            with pytest.raises(InferenceServerException) as refused:
                method()
            # gRPC answers UNAVAILABLE, not PERMISSION_DENIED (measured on 2.51).
            assert refused.value.status() == "StatusCode.UNAVAILABLE", api
            assert "This protocol is restricted" in refused.value.message(), api
            method(headers=keyed)  # answers
        assert client.get_inference_statistics(MODEL).model_stats  # statistics stay open
        assert client.is_server_live()
    finally:
        client.close()
