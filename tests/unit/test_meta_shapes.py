"""meta.yaml fields of the wrong shape are one MetaError naming the field, never another exception;
and Triton's /metrics that is not Prometheus text is no scrape, never a crash of the watcher."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.sample import Variant, write_sample_package
from orchestrator.store.metafile import MAX_VERSION, META_FILE, MetaError, parse_meta
from orchestrator.triton import metrics


@pytest.fixture(scope="module")
def meta_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    return (write_sample_package(tmp_path_factory.mktemp("pkg") / "p", Variant.BETTER) / META_FILE).read_text()


@pytest.mark.parametrize(("change", "says"), [
    (("framework:", "framework: 5\nold_framework:"), "framework must map names to versions, not 5"),
    (("model: classifier", "model: classifier\nversion: true"), "version True must be a whole number"),
    (("model: classifier", "model: classifier\nversion: 999999999999999999"), f"from 1 to {MAX_VERSION:,}"),
    (("model: classifier", "model: classifier\nversion: 0"), "must be a whole number"),
    (("model: classifier", "model: classifier\nverification: {status: verified, golden: {accuracy: high}}"),
     "a field has the wrong type (ValueError"),
    (("model: classifier", "model: classifier\nverification: 7"), "verification must be a mapping"),
])
def test_a_field_of_the_wrong_shape_is_a_meta_error(meta_text: str, change: tuple[str, str], says: str) -> None:
    assert change[0] in meta_text
    with pytest.raises(MetaError) as refused:
        parse_meta(meta_text.replace(change[0], change[1], 1))
    assert says in str(refused.value)


def test_the_largest_version_is_accepted(meta_text: str) -> None:
    assert parse_meta(meta_text.replace("model: classifier", f"model: classifier\nversion: {MAX_VERSION}", 1)
                      ).version == MAX_VERSION


class _Html(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_metrics_that_are_an_html_page_are_no_scrape(html_server: str) -> None:
    assert metrics.scrape(html_server, timeout_s=5) is None
