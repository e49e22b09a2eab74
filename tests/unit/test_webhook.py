"""The watcher's webhook against a real local HTTP server: signed when a secret is set, retried with a
doubling pause, never following a redirect, never reading more than its cap, http(s) URLs only."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.core.policy import PolicyError, parse_watch_policy
from orchestrator.daemons.webhook import SIGNATURE_HEADER, deliver


@dataclass
class Receiver:
    answers: list[int]  # status per request, the last repeated
    body_bytes: int = 0
    hits: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver([200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.hits.append((self.path, body, dict(self.headers)))
            status = state.answers[min(len(state.hits), len(state.answers)) - 1]
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "/elsewhere")
            if state.body_bytes < 0:  # an answer that never ends
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    return  # the client stopped reading: what the cap is for
            payload = b"x" * state.body_bytes
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_the_body_is_signed_with_the_secret(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    assert deliver(url, {"event": "rollback", "model": "m"}, secret=b"s3cret", sleep=lambda s: None)
    [(path, body, headers)] = state.hits
    assert path == "/hook" and json.loads(body) == {"event": "rollback", "model": "m"}
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected


def test_without_a_secret_nothing_is_signed(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    assert deliver(url, {"event": "alert"}, sleep=lambda s: None)
    assert SIGNATURE_HEADER not in state.hits[0][2]


def test_failures_are_retried_with_a_doubling_pause(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.answers = [500, 503, 200]
    pauses: list[float] = []
    assert deliver(url, {"event": "alert"}, sleep=pauses.append)
    assert len(state.hits) == 3 and pauses == [1.0, 2.0]
    state.hits.clear()
    state.answers = [500]
    assert not deliver(url, {"event": "alert"}, attempts=3, sleep=pauses.append)
    assert len(state.hits) == 3


def test_a_redirect_is_not_followed(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.answers = [307]
    assert not deliver(url, {"event": "alert"}, attempts=2, sleep=lambda s: None)
    assert [path for path, _, _ in state.hits] == ["/hook", "/hook"]  # never /elsewhere


def test_an_answer_that_never_ends_is_read_only_up_to_the_cap(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.body_bytes = -1  # without the cap the read would never return
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(deliver(url, {"event": "alert"}, sleep=lambda s: None)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert done == [True], "deliver kept reading an endless answer"


@pytest.mark.parametrize("bad", ["file:///etc/passwd", "ftp://h/x", "gopher://h", "127.0.0.1:9/hook"])
def test_only_http_urls_are_accepted(bad: str) -> None:
    with pytest.raises(PolicyError, match="webhook must be an http"):
        parse_watch_policy({"webhook": bad})
