"""The watcher's HTTP port: Prometheus's ``/metrics``, and a read-only answer to "which version does this
label name, and is it READY", for clients that route by version (an A/B split decided by the client).

    GET /api/v1/models/<model>/labels          {"model": ..., "labels": {"stable": {"version": 2, "ready": true}}}
    GET /api/v1/models/<model>/labels/<name>   {"model": ..., "label": ..., "version": 2, "ready": true}

Anything else is the metrics. Readiness is asked of Triton at each request (one short call); a Triton
that does not answer makes ``ready`` false, never an error page.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from orchestrator.errors import OrchestratorError

_LABELS = re.compile(r"^/api/v1/models/([^/]+)/labels(?:/([^/]+))?/?$")

# (model) -> labels, and (model) -> READY versions; raise OrchestratorError (unknown model, unreadable file).
LabelsOf = Callable[[str], dict[str, int]]
ReadyOf = Callable[[str], set[int]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def labels_app(labels_of: LabelsOf, ready_of: ReadyOf, metrics: Callable[..., Iterable[bytes]]
               ) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        found = _LABELS.match(environ.get("PATH_INFO", ""))
        if found is None:
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, 405, {"error": "read-only: GET only"})
        model, name = found.group(1), found.group(2)
        try:
            labels = labels_of(model)
        except OrchestratorError as exc:
            return _answer(start_response, 404, {"error": str(exc)})
        try:
            ready = ready_of(model)
        except OrchestratorError:
            ready = set()  # Triton not answering: nothing is known READY
        if name is None:
            return _answer(start_response, 200, {"model": model, "labels": {
                k: {"version": v, "ready": v in ready} for k, v in labels.items()}})
        if name not in labels:
            return _answer(start_response, 404, {"error": f"{model} has no label {name!r}",
                                                 "labels": sorted(labels)})
        return _answer(start_response, 200, {"model": model, "label": name, "version": labels[name],
                                             "ready": labels[name] in ready})
    return app


def _answer(start_response: Callable[..., Any], status: int, body: dict[str, object]) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def serve(registry: CollectorRegistry, port: int, address: str, labels_of: LabelsOf | None = None,
          ready_of: ReadyOf | None = None) -> WSGIServer:
    """Serve in a daemon thread until the process ends; returns the server (its ``server_port``)."""
    metrics = make_wsgi_app(registry)
    app = labels_app(labels_of, ready_of, metrics) if labels_of is not None and ready_of is not None else metrics
    server = make_server(address, port, app, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="http-api", daemon=True).start()
    return server
