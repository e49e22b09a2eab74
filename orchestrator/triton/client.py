"""The only module that knows tritonclient: control API, repository index, inference.

tritonclient's errors are translated here, once, by type and HTTP status (``_translated``),
never by message text: a socket error or a dropped connection is ``TritonUnreachable``
naming the URL, 403 is ``TritonForbidden``, a failed load is ``LoadFailed`` with Triton's
reason, anything else Triton answers is ``TritonError``.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from orchestrator.errors import LoadFailed, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.protocol import IndexEntry, InferenceResult, TritonState, wait_unloaded

ADMIN_HEADER = "admin-key"
FORBIDDEN = "403"

# What geventhttpclient raises when nothing answers: refused, reset, timed out (all OSError),
# or a connection dropped mid-answer (http.client.HTTPException subclasses).
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


class Triton:
    """A connection to one server. Not thread-safe: give each thread its own."""

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 10.0,
                 load_timeout_s: float = 600.0) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self._headers = {ADMIN_HEADER: admin_key} if admin_key else None
        self._client = httpclient.InferenceServerClient(
            host_port(url), connection_timeout=timeout_s, network_timeout=timeout_s)
        # Loading a large engine takes longer than any query; it gets its own deadline.
        self._control = httpclient.InferenceServerClient(
            host_port(url), connection_timeout=timeout_s, network_timeout=load_timeout_s)

    def close(self) -> None:
        self._client.close()
        self._control.close()

    @contextmanager
    def _translated(self, what: str, loading: str | None = None) -> Iterator[None]:
        """The one translation of tritonclient's errors; ``loading`` names the model of a load."""
        try:
            yield
        except InferenceServerException as exc:
            message = one_line(exc.message() or str(exc))
            if str(exc.status()) == FORBIDDEN:
                raise TritonForbidden(self.url, what, self._headers is not None) from exc
            if loading is not None:
                raise LoadFailed(loading, message) from exc
            raise TritonError(f"{what} failed: {message or f'HTTP {exc.status()}'}") from exc
        except _NETWORK_ERRORS as exc:
            raise TritonUnreachable(self.url, str(exc) or type(exc).__name__) from exc

    def _call(self, what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self._translated(what):
            return fn(*args, **kwargs)

    # --- health -------------------------------------------------------------------------
    def is_live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except (InferenceServerException, *_NETWORK_ERRORS):
            return False

    def require_live(self) -> None:
        """Live, and the model-control API accepts us (a wrong admin key fails here, before any change)."""
        if not self._call("liveness check", self._client.is_server_live):
            raise TritonUnreachable(self.url, "server is not live")
        self.index()

    # --- repository -------------------------------------------------------------------
    def index(self) -> list[IndexEntry]:
        # The index answers at once: the short deadline, so a hung server cannot hold `status`.
        raw = self._call("repository index", self._client.get_model_repository_index, headers=self._headers)
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
        with self._translated(f"load of {model}", loading=model):
            self._control.load_model(model, headers=self._headers, config=config_json)

    def wait_unloaded(self, model: str, versions: set[int] | None, timeout_s: float) -> bool:
        return wait_unloaded(lambda: self.states(model), versions, timeout_s, time.monotonic, time.sleep)

    def unload(self, model: str) -> None:
        self._call(f"unload of {model}", self._control.unload_model, model, headers=self._headers)

    def model_ready(self, model: str, version: int | None = None) -> bool:
        try:
            return bool(self._client.is_model_ready(model, str(version or "")))
        except InferenceServerException:
            return False
        except _NETWORK_ERRORS as exc:
            raise TritonUnreachable(self.url, str(exc) or type(exc).__name__) from exc

    # --- tracing and statistics (shadow traffic) -----------------------------------------
    def trace_settings(self, model: str | None = None) -> dict[str, object]:
        """The server's trace settings, or those in effect for ``model``."""
        return dict(self._call("trace settings", self._client.get_trace_settings, model_name=model or None,
                               headers=self._headers))

    def update_trace_settings(self, model: str | None, settings: dict[str, object]) -> dict[str, object]:
        """Change tracing at run time; a setting given as None falls back to the server-wide value.

        The trace file's location cannot be changed this way (Triton answers 501): it is a start flag.
        """
        return dict(self._call("trace settings update", self._client.update_trace_settings,
                               model_name=model or None, settings=settings, headers=self._headers))

    def inference_stats(self, model: str) -> tuple[int, int]:
        """Successful requests of ``model`` (all versions) and their total time inside Triton in ns."""
        raw = self._call(f"statistics of {model}", self._client.get_inference_statistics, model_name=model,
                         headers=self._headers)
        count = total_ns = 0
        for entry in raw.get("model_stats", []):
            success = entry.get("inference_stats", {}).get("success", {})
            count += int(success.get("count", 0))
            total_ns += int(success.get("ns", 0))
        return count, total_ns

    # --- inference ----------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: int | None = None) -> InferenceResult:
        request = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            request.append(tensor)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
        result = self._call(f"inference on {model}", self._client.infer, model, request,
                            model_version=str(version or ""), outputs=wanted)
        response = result.get_response()
        return InferenceResult(
            model=str(response.get("model_name", model)),
            version=int(response.get("model_version", version or 0)),
            outputs={name: result.as_numpy(name) for name in outputs},
        )


def one_line(message: str) -> str:
    """Triton's reasons carry the backend's Python traceback ("At: ..."); keep the reason itself."""
    head = message.split("\n\nAt:", 1)[0]
    return " ".join(head.split()).rstrip(" ;")
