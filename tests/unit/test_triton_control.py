"""What only a fake server can show of ``control.TritonControl``: answers Triton never gives,
connections it drops, a server that hangs. The fake is a real ``http.server`` on a free
loopback port speaking HTTP/1.1 keep-alive, never a mock; ``tests/contract/`` covers the rest
against a real tritonserver and the twin.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.errors import LoadFailed, NotTriton, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.control import ADMIN_HEADER, TritonControl
from orchestrator.triton.protocol import IndexEntry, TritonState

KEY = "fake-admin-key"
INDEX = [{"name": "m", "version": "1", "state": "READY"},
         {"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
         {"name": "spare"}]


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: threading.Event | None = None  # answer only once this is set (a hung server)
    drop: bool = False  # close the connection without any answer
    close_after: bool = False  # answer, then close the kept-alive connection without saying so


def triton_like(method: str, path: str, body: bytes) -> Answer:
    if path == "/v2/health/live" or path.endswith("/ready"):
        return Answer()
    if path == "/v2/repository/index":
        return Answer(body=json.dumps(INDEX).encode())
    if path.endswith(("/load", "/unload")):
        return Answer()
    if path.endswith("/trace/setting"):
        return Answer(body=json.dumps({"trace_rate": "1000", "trace_level": ["OFF"]}).encode())
    if path.endswith("/stats"):
        stats = {"model_stats": [{"inference_stats": {"success": {"count": 3, "ns": 30}}},
                                 {"inference_stats": {"success": {"count": 2, "ns": 20}}}]}
        return Answer(body=json.dumps(stats).encode())
    return Answer(400, b'{"error":"no such endpoint"}')


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Fake:
    url: str
    respond: Callable[[str, str, bytes], Answer] = triton_like
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: threading.Event = field(default_factory=threading.Event)  # a connection was closed by the server


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Triton speaks it

        def setup(self) -> None:
            fake.connections += 1
            super().setup()

        def finish(self) -> None:
            super().finish()
            fake.closed.set()

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                         body))
            answer = fake.respond(self.command, self.path, body)
            if answer.delay is not None:
                answer.delay.wait(30)
            if answer.drop:
                self.close_connection = True
                return
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
            self.close_connection = answer.close_after

        do_GET = do_POST = _answer

    return Handler


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake := Fake("")))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def control(fake: Fake) -> Iterator[TritonControl]:
    client = TritonControl(fake.url, KEY, timeout_s=5.0)
    yield client
    client.close()


def test_every_method_reads_tritons_answers(fake: Fake, control: TritonControl) -> None:
    assert control.is_live()
    control.require_live()
    assert control.index() == [IndexEntry("m", 1, TritonState.READY, ""),
                               IndexEntry("m", 2, TritonState.UNAVAILABLE, "unloaded"),
                               IndexEntry("spare", None, TritonState.UNKNOWN, "")]
    assert set(control.states("m")) == {1, 2}
    control.load("m", '{"name": "m"}')
    control.load("m")
    control.unload("m")
    assert control.model_ready("m") and control.model_ready("m", 2)
    assert control.trace_settings("m") == {"trace_rate": "1000", "trace_level": ["OFF"]}
    assert control.update_trace_settings(None, {"trace_rate": None})["trace_rate"] == "1000"
    assert control.inference_stats("m") == (5, 50)
    assert fake.connections == 1  # one kept-alive connection for all of it
    sent = {(r.method, r.path): r for r in fake.requests}
    assert [json.loads(r.body) for r in fake.requests if r.path.endswith(("/load", "/unload"))] == [
        {"parameters": {"config": '{"name": "m"}'}}, {}, {}]  # unload_dependents: false by default
    assert json.loads(sent["POST", "/v2/repository/index"].body) == {}
    assert sent["POST", "/v2/trace/setting"].body == b'{"trace_rate": null}'  # None is sent as null
    assert sent["GET", "/v2/models/m/versions/2/ready"]
    keyed = {r.path for r in fake.requests if r.headers.get(ADMIN_HEADER) == KEY}
    unkeyed = {r.path for r in fake.requests if ADMIN_HEADER not in r.headers}
    # As tritonclient was called: the key on the repository, control, trace and stats calls only.
    assert unkeyed == {"/v2/health/live", "/v2/models/m/ready", "/v2/models/m/versions/2/ready"}
    assert keyed == {r.path for r in fake.requests} - unkeyed


def test_model_names_are_quoted_as_one_path_segment(fake: Fake, control: TritonControl) -> None:
    name = "a b/c%?#é"
    control.load(name)
    control.model_ready(name, 3)
    control.trace_settings(name)
    control.inference_stats(name)
    quoted = "a%20b%2Fc%25%3F%23%C3%A9"
    assert [r.path for r in fake.requests] == [f"/v2/repository/models/{quoted}/load",
                                               f"/v2/models/{quoted}/versions/3/ready",
                                               f"/v2/models/{quoted}/trace/setting",
                                               f"/v2/models/{quoted}/stats"]


@pytest.mark.parametrize("spelling", ["{url}", "{url}/", "{bare}"])
def test_url_spellings(fake: Fake, spelling: str) -> None:
    bare = fake.url.split("://", 1)[1]
    client = TritonControl(spelling.format(url=fake.url, bare=bare), KEY)
    try:
        assert client.url.startswith("http://")
        assert client.index()
    finally:
        client.close()
    assert fake.requests[-1].path == "/v2/repository/index"


def test_a_path_prefix_is_kept(fake: Fake) -> None:
    client = TritonControl(f"{fake.url}/triton/", KEY)
    try:
        client.is_live()
    finally:
        client.close()
    assert fake.requests[-1].path == "/triton/v2/health/live"


def test_tritons_errors_are_translated_by_status(fake: Fake, control: TritonControl) -> None:
    reason = "load failed for model 'm': version 3 is at UNAVAILABLE state: Internal: boom\n\nAt:\n  model.py(12)"
    answers = {
        "/v2/repository/index": Answer(403, b'{"error":"This API is restricted"}'),
        "/v2/repository/models/m/load": Answer(400, json.dumps({"error": reason}).encode()),
        "/v2/repository/models/m/unload": Answer(500, b""),
        "/v2/models/m/stats": Answer(400, b'{"error":"requested model \'m\' is not available"}'),
        "/v2/models/m/ready": Answer(400, b'{"error":"unknown model"}'),
    }
    fake.respond = lambda method, path, body: answers.get(path) or triton_like(method, path, body)
    with pytest.raises(TritonForbidden) as forbidden:
        control.index()
    assert forbidden.value.url == fake.url and "the admin key sent was refused" in str(forbidden.value)
    with pytest.raises(TritonForbidden, match="no admin key was sent"):
        TritonControl(fake.url).require_live()
    with pytest.raises(LoadFailed) as failed:
        control.load("m", "{}")
    assert failed.value.model == "m"
    assert failed.value.reason == "load failed for model 'm': version 3 is at UNAVAILABLE state: Internal: boom"
    with pytest.raises(TritonError, match=r"^unload of m failed: HTTP 500$"):
        control.unload("m")
    with pytest.raises(TritonError, match=r"^statistics of m failed: requested model 'm' is not available$"):
        control.inference_stats("m")
    assert not control.model_ready("m")  # Triton's "no" is an answer, not an error
    assert control.is_live()


def test_a_refused_trace_call_is_forbidden_like_a_refused_load(fake: Fake, control: TritonControl) -> None:
    # What Triton 2.51 answers a restricted API without the right key (tests/integration/test_restricted_api.py).
    refusal = Answer(403, b"{\"error\":\"This API is restricted, expecting header 'admin-key'\"}", "text/plain")
    fake.respond = lambda method, path, body: refusal if path.endswith("/trace/setting") else \
        triton_like(method, path, body)
    calls: list[Callable[[], object]] = [control.trace_settings, lambda: control.trace_settings("m"),
                                         lambda: control.update_trace_settings(None, {"trace_rate": "1"}),
                                         lambda: control.update_trace_settings("m", {"trace_level": ["OFF"]})]
    for call in calls:
        with pytest.raises(TritonForbidden) as forbidden:
            call()
        assert forbidden.value.url == fake.url
        assert str(forbidden.value).startswith("trace settings") and "the admin key sent was refused" in \
            str(forbidden.value)
    keyless = TritonControl(fake.url)
    try:
        with pytest.raises(TritonForbidden, match="no admin key was sent; set ORCH_ADMIN_KEY"):
            keyless.update_trace_settings("m", {"trace_rate": "1"})
    finally:
        keyless.close()
    assert all(r.headers.get(ADMIN_HEADER) == KEY for r in fake.requests[:len(calls)])  # the key was sent


HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize("status", [200, 404, 502])
def test_an_html_page_is_one_error_naming_the_url(fake: Fake, control: TritonControl, status: int) -> None:
    fake.respond = lambda method, path, body: Answer(status, HTML, "text/html")
    calls: list[Callable[[], object]] = [control.index, control.require_live, control.trace_settings,
                                         lambda: control.inference_stats("m")]
    if status != 200:
        calls.append(lambda: control.load("m", "{}"))  # not a LoadFailed: whatever answered is not Triton
    for call in calls:
        with pytest.raises(NotTriton) as caught:
            call()
        assert caught.value.exit_code == 9  # Triton is not at this URL: as good as unreachable
        assert str(caught.value).startswith(f"{fake.url} is not Triton: the ")
        assert f"got HTTP {status}, text/html: '<html>" in str(caught.value)
    assert control.is_live() is (status == 200)  # health needs no JSON: any answer but 200 is "not live"


def test_json_that_is_not_tritons_is_not_a_traceback(fake: Fake, control: TritonControl) -> None:
    fake.respond = lambda method, path, body: Answer(body=b'{"hello": "world"}')
    for call in (control.index, lambda: control.inference_stats("m")):
        with pytest.raises(NotTriton, match="is not Triton"):
            call()
    fake.respond = lambda method, path, body: Answer(body=b'[{"name": "m", "version": "one"}]')
    with pytest.raises(NotTriton, match="is not Triton"):
        control.index()


def test_a_dropped_idle_connection_is_replaced_once(fake: Fake, control: TritonControl) -> None:
    closing = {"once": True}

    def close_the_first(method: str, path: str, body: bytes) -> Answer:
        answer = triton_like(method, path, body)
        answer.close_after, closing["once"] = closing["once"], False
        return answer

    fake.respond = close_the_first
    assert control.is_live()
    assert fake.closed.wait(5)  # the server closed it, as an idle timeout or a proxy does; we were not told
    assert len(control.index()) == 3
    control.load("m", "{}")
    assert fake.connections == 2
    assert [r.path for r in fake.requests] == ["/v2/health/live", "/v2/repository/index",
                                               "/v2/repository/models/m/load"]


def test_a_fresh_connection_dropped_without_an_answer_is_not_retried(fake: Fake, control: TritonControl) -> None:
    fake.respond = lambda method, path, body: Answer(drop=True)
    with pytest.raises(TritonUnreachable) as caught:
        control.load("m", "{}")
    assert caught.value.url == fake.url
    assert len(fake.requests) == 1  # a load is sent again only when the connection was an old one
    assert not control.is_live()


def test_a_hung_server_is_unreachable_at_the_deadline(fake: Fake) -> None:
    release = threading.Event()
    fake.respond = lambda method, path, body: Answer(body=json.dumps(INDEX).encode(), delay=release)
    client = TritonControl(fake.url, KEY, timeout_s=0.3)
    try:
        with pytest.raises(TritonUnreachable, match=r"no answer within 0\.3 s"):
            client.index()
        assert not release.is_set()  # the server never answered
        assert not client.is_live()
    finally:
        release.set()
        client.close()
    fake.respond = triton_like
    assert client.index()  # a new connection after the one left mid-answer


def test_load_and_unload_wait_longer_than_queries(fake: Fake) -> None:
    slow = threading.Event()
    threading.Timer(0.5, slow.set).start()
    fake.respond = lambda method, path, body: Answer(delay=slow) if "/load" in path else triton_like(method, path, body)
    client = TritonControl(fake.url, KEY, timeout_s=0.1, load_timeout_s=30.0)
    try:
        client.load("m", "{}")  # answered after the query deadline, within the load deadline
        assert slow.is_set()
    finally:
        client.close()


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    client = TritonControl(f"127.0.0.1:{port}", KEY, timeout_s=1.0)
    assert not client.is_live()
    assert not client.is_live()
    for call in (client.index, client.require_live, lambda: client.model_ready("m"), lambda: client.load("m")):
        with pytest.raises(TritonUnreachable) as caught:
            call()
        assert caught.value.url == f"http://127.0.0.1:{port}"
