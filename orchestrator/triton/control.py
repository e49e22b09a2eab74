"""Triton's health, repository, model-control, trace and statistics APIs over the stdlib alone.

Everything but inference is small JSON over Triton's KServe-v2 HTTP endpoints, so it needs
neither tritonclient nor gevent under it (~100 ms of every command's start-up): ``status`` and
``rollback`` talk to Triton through this module only. ``client.Triton`` adds ``infer``, the one
call that needs tritonclient's binary tensor protocol.

Every call but health and readiness sends the admin key: the servers this project starts lock
``RESTRICTED_APIS`` behind it, and statistics does not mind it.

Errors are translated here by HTTP status, never by message text (``answered_error``): no
answer (refused, reset, timed out, dropped) is ``TritonUnreachable`` naming the URL, 403 (a
restricted API without the right key: trace settings as much as a load) is ``TritonForbidden``,
a failed load is ``LoadFailed`` with Triton's reason, anything else Triton answers is
``TritonError``, and so is an answer that is not Triton's JSON (a proxy's
HTML page, another service on the port).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from orchestrator.errors import LoadFailed, NotTriton, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.protocol import ExecutionStats, IndexEntry, TritonState, wait_unloaded

ADMIN_HEADER = "admin-key"
# The APIs every Triton of this project locks behind the admin key (--http-restricted-api and
# --grpc-restricted-protocol, see embedded.restricted_flags and docker/triton-entrypoint.sh):
# changing models, tensor traces (they hold production inputs and can fill the disk), the log
# settings, and shared-memory regions (another process's memory). Health, metadata, model
# config, inference and statistics stay open to the device's clients.
RESTRICTED_APIS = ("model-repository", "trace", "logging", "shared-memory")
FORBIDDEN = 403
# What an unanswered request raises: refused, reset, timed out (all OSError), or a connection
# dropped mid-answer (http.client.HTTPException subclasses). geventhttpclient raises the same.
NETWORK_ERRORS = (OSError, http.client.HTTPException)
# A kept-alive connection the server (or a proxy) closed while it sat idle: nothing was answered,
# so the request is sent once more on a new connection (all of these calls are idempotent: a load
# of the same config twice ends as one).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_JSON = {"Content-Type": "application/json"}


def host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def one_line(message: str) -> str:
    """Triton's reasons carry the backend's Python traceback ("At: ..."); keep the reason itself."""
    head = message.split("\n\nAt:", 1)[0]
    return " ".join(head.split()).rstrip(" ;")


def answered_error(url: str, what: str, status: int | None, message: str, key_sent: bool,
                   loading: str | None = None) -> TritonError:
    """The one translation of an error Triton answered; ``loading`` names the model of a load."""
    if status == FORBIDDEN:
        return TritonForbidden(url, what, key_sent)
    if loading is not None:
        return LoadFailed(loading, message or f"HTTP {status}")
    return TritonError(f"{what} failed: {message or f'HTTP {status}'}")


def unreachable(url: str, exc: BaseException) -> TritonUnreachable:
    return TritonUnreachable(url, str(exc) or type(exc).__name__)


class _NotTriton(Exception):
    """An answer that is not Triton's JSON; ``TritonControl._send`` words it with the URL."""


# Every character of a model name quoted, "/" too: it is one path segment.
def _model(model: str) -> str:
    return f"/v2/models/{quote(model, safe='')}"


def _repository(model: str) -> str:
    return f"/v2/repository/models/{quote(model, safe='')}"


class TritonControl:
    """One server, on one kept-alive connection. Not thread-safe: give each thread its own.

    ``timeout_s`` bounds connecting and every query; ``load_timeout_s`` bounds load and unload,
    which block until Triton is done (a large TensorRT engine takes minutes).
    """

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 10.0,
                 load_timeout_s: float = 600.0) -> None:
        self.url = url if "://" in url else f"http://{url}"
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")  # Triton behind a path, as tritonclient allows
        self._admin = {ADMIN_HEADER: admin_key} if admin_key else {}
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self._connection: http.client.HTTPConnection | None = None

    @property
    def key_sent(self) -> bool:
        return bool(self._admin)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # --- one request ----------------------------------------------------------------------
    def _connected(self) -> tuple[http.client.HTTPConnection, bool]:
        """The connection, opened if need be, and whether it was already open (so possibly stale)."""
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._netloc, timeout=self.timeout_s)
        reused = self._connection.sock is not None  # http.client drops it after "Connection: close"
        if not reused:
            try:
                self._connection.connect()  # within timeout_s, even before a load
            except TimeoutError as exc:
                raise TritonUnreachable(self.url, f"no connection within {self.timeout_s:g} s") from exc
        return self._connection, reused

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                  timeout_s: float) -> tuple[int, str, bytes]:
        connection, reused = self._connected()
        try:
            try:
                return self._round_trip(connection, method, path, body, headers, timeout_s)
            except _STALE:
                if not reused:
                    raise
                self.close()
                connection, _ = self._connected()
                return self._round_trip(connection, method, path, body, headers, timeout_s)
        except BaseException:
            self.close()  # half a request or answer on it: never reuse it
            raise

    def _round_trip(self, connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
                    headers: dict[str, str], timeout_s: float) -> tuple[int, str, bytes]:
        assert connection.sock is not None
        connection.sock.settimeout(timeout_s)
        connection.request(method, self._prefix + path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()

    def _raw(self, method: str, path: str, body: object = None, admin: bool = False,
             timeout_s: float | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of whatever answered; no answer raises TritonUnreachable."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        payload = None if body is None else json.dumps(body).encode()  # None values go as null
        headers = {**(_JSON if payload is not None else {}), **(self._admin if admin else {})}
        try:
            return self._exchange(method, path, payload, headers, timeout_s)
        except TimeoutError as exc:
            raise TritonUnreachable(self.url, f"no answer within {timeout_s:g} s") from exc
        except NETWORK_ERRORS as exc:
            raise unreachable(self.url, exc) from exc

    def _send(self, method: str, path: str, what: str, body: object = None, timeout_s: float | None = None,
              loading: str | None = None) -> tuple[int, str, bytes]:
        """A 2xx answer to a call that sends the admin key; any other raises."""
        status, content_type, data = self._raw(method, path, body, admin=True, timeout_s=timeout_s)
        if 200 <= status < 300:
            return status, content_type, data
        message = ""
        if status != FORBIDDEN:
            try:
                message = _error_message(data)
            except _NotTriton:
                raise self._not_triton(what, status, content_type, data) from None
        raise answered_error(self.url, what, status, message, self.key_sent, loading)

    def _json(self, method: str, path: str, what: str, body: object = None) -> object:
        status, content_type, data = self._send(method, path, what, body)
        try:
            return json.loads(data)
        except ValueError:
            raise self._not_triton(what, status, content_type, data) from None

    def _json_object(self, method: str, path: str, what: str, body: object = None) -> dict[str, object]:
        raw = self._json(method, path, what, body)
        if not isinstance(raw, dict):
            raise self._not_triton(what, 200, "application/json", json.dumps(raw).encode())
        return raw

    def _not_triton(self, what: str, status: int, content_type: str, data: bytes) -> TritonError:
        sample = " ".join(data[:80].decode("utf-8", "replace").split())
        kind = f"{content_type}: " if content_type else ""
        return NotTriton(self.url, f"the {what} got HTTP {status}, {kind}{sample!r}")

    @contextmanager
    def _shaped(self, what: str, raw: object) -> Iterator[None]:
        """JSON that parsed but is not shaped like Triton's answer is not Triton's either."""
        try:
            yield
        except (AttributeError, KeyError, TypeError, ValueError):
            raise self._not_triton(what, 200, "application/json", json.dumps(raw).encode()) from None

    # --- health -------------------------------------------------------------------------
    # Health and readiness are never locked: no admin key, and any answer but 200 means "no".
    def is_live(self) -> bool:
        try:
            return self._raw("GET", "/v2/health/live")[0] == 200
        except TritonError:
            return False

    def require_live(self) -> None:
        """Live, and the model-control API accepts us (a wrong admin key fails here, before any change)."""
        status, content_type, data = self._raw("GET", "/v2/health/live")
        if status != 200:
            try:
                _error_message(data)  # Triton says "not live" with an empty body or its JSON error
            except _NotTriton:
                raise self._not_triton("liveness check", status, content_type, data) from None
            raise TritonUnreachable(self.url, "server is not live")
        self.index()

    # --- repository -------------------------------------------------------------------
    def index(self) -> list[IndexEntry]:
        # The index answers at once: the short deadline, so a hung server cannot hold `status`.
        what = "repository index"
        raw: Any = self._json("POST", "/v2/repository/index", what, {})
        with self._shaped(what, raw):
            if not isinstance(raw, list):
                raise TypeError("not a list")
            entries = []
            for item in raw:
                version = item.get("version")
                entries.append(IndexEntry(
                    name=str(item.get("name", "")),
                    version=int(version) if version not in (None, "") else None,
                    state=TritonState.parse(str(item.get("state", ""))),
                    reason=one_line(str(item.get("reason", ""))),
                ))
        return entries

    def states(self, model: str) -> dict[int, IndexEntry]:
        return {e.version: e for e in self.index() if e.name == model and e.version is not None}

    def load(self, model: str, config_json: str | None = None) -> None:
        body = {"parameters": {"config": config_json}} if config_json is not None else {}
        self._send("POST", f"{_repository(model)}/load", f"load of {model}", body,
                   timeout_s=self.load_timeout_s, loading=model)

    def wait_unloaded(self, model: str, versions: set[int] | None, timeout_s: float) -> bool:
        return wait_unloaded(lambda: self.states(model), versions, timeout_s, time.monotonic, time.sleep)

    def unload(self, model: str) -> None:
        self._send("POST", f"{_repository(model)}/unload", f"unload of {model}", {},
                   timeout_s=self.load_timeout_s)

    def model_ready(self, model: str, version: int | None = None) -> bool:
        path = _model(model) + (f"/versions/{version}" if version else "") + "/ready"
        return self._raw("GET", path)[0] == 200  # 400: unknown model or version, or not loaded

    # --- tracing and statistics (shadow traffic, the probes' cost) -----------------------
    def _trace_path(self, model: str | None) -> str:
        return f"{_model(model)}/trace/setting" if model else "/v2/trace/setting"

    def trace_settings(self, model: str | None = None) -> dict[str, object]:
        """The server's trace settings, or those in effect for ``model``; the trace API is a restricted one."""
        return self._json_object("GET", self._trace_path(model), "trace settings")

    def update_trace_settings(self, model: str | None, settings: dict[str, object]) -> dict[str, object]:
        """Change tracing at run time; a setting given as None falls back to the server-wide value.

        The trace file's location cannot be changed this way (Triton answers 501): it is a start flag.
        """
        return self._json_object("POST", self._trace_path(model), "trace settings update", settings)

    def server_metadata(self) -> dict[str, object]:
        """``GET /v2``: the server's name, version and extensions (a device's facts for the fleet)."""
        return self._json_object("GET", "/v2", "server metadata")

    def inference_stats(self, model: str) -> tuple[int, int]:
        """Successful requests of ``model`` (all versions) and their total time inside Triton in ns."""
        what = f"statistics of {model}"
        raw: Any = self._json_object("GET", f"{_model(model)}/stats", what)
        count = total_ns = 0
        with self._shaped(what, raw):
            for entry in raw["model_stats"]:
                success = entry.get("inference_stats", {}).get("success", {})
                count += int(success.get("count", 0))
                total_ns += int(success.get("ns", 0))
        return count, total_ns

    def execution_stats(self, model: str) -> dict[int, ExecutionStats]:
        """Each loaded version's executions, samples, compute time, successful and failed requests, from one GET."""
        what = f"statistics of {model}"
        raw: Any = self._json_object("GET", f"{_model(model)}/stats", what)
        found: dict[int, ExecutionStats] = {}
        with self._shaped(what, raw):
            for entry in raw["model_stats"]:
                stats = entry.get("inference_stats", {})
                found[int(entry["version"])] = ExecutionStats(
                    executions=int(entry.get("execution_count", 0)),
                    inferences=int(entry.get("inference_count", 0)),
                    compute_ns=sum(int(stats.get(part, {}).get("ns", 0))
                                   for part in ("compute_input", "compute_infer", "compute_output")),
                    success_count=int(stats.get("success", {}).get("count", 0)),
                    success_ns=int(stats.get("success", {}).get("ns", 0)),
                    fail_count=int(stats.get("fail", {}).get("count", 0)),
                    fail_ns=int(stats.get("fail", {}).get("ns", 0)))
        return found


def _error_message(data: bytes) -> str:
    """Triton's ``{"error": "..."}`` in one line; "" for an empty body; _NotTriton for anything else."""
    if not data.strip():
        return ""
    try:
        parsed = json.loads(data)
    except ValueError:
        raise _NotTriton from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), str):
        raise _NotTriton
    return one_line(parsed["error"])
