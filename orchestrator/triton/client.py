"""The client of a real server: ``control.TritonControl`` plus inference over tritonclient.

Inference is the one call that needs tritonclient's binary tensor protocol; everything else
goes over ``TritonControl``'s stdlib HTTP. tritonclient.http (with gevent and numpy under it,
~100 ms to import) is imported on the first ``infer``, so a command that only reads the index
or switches versions never loads it. Its errors are translated as ``TritonControl``'s are, by
type and HTTP status through ``control.answered_error``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from orchestrator.triton.control import NETWORK_ERRORS, TritonControl, answered_error, host_port, one_line, unreachable
from orchestrator.triton.protocol import InferenceResult

if TYPE_CHECKING:  # annotations only: numpy comes with tritonclient, on the first infer
    import numpy as np

log = logging.getLogger(__name__)


class Triton(TritonControl):
    """A connection to one server. Not thread-safe: give each thread its own, or use it from one thread at a
    time (a pool's threads in turn: the fleet agent's handlers and jobs)."""

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 10.0,
                 load_timeout_s: float = 600.0) -> None:
        super().__init__(url, admin_key, timeout_s, load_timeout_s)
        # tritonclient.http.InferenceServerClient per thread, made by its first infer: its gevent sockets belong
        # to the thread that made them ("greenlet.error: Cannot switch to a different thread" in any other).
        self._local = threading.local()
        self._clients: list[Any] = []  # every thread's, for close

    def close(self) -> None:
        super().close()
        clients, self._clients, self._local = self._clients, [], threading.local()
        for client in clients:
            try:
                client.close()
            except Exception as exc:  # a socket of another thread's hub: it goes with that thread
                log.debug("closing an inference connection made by another thread: %s", exc)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: int | None = None, request_id: str = "") -> InferenceResult:
        # Imported here, not at the top: tritonclient.http imports gevent and geventhttpclient.
        import tritonclient.http as httpclient  # noqa: PLC0415
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: PLC0415

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpclient.InferenceServerClient(
                host_port(self.url), ssl=self.url.startswith("https://"), connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s)
            self._clients.append(client)
        request = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            request.append(tensor)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
        what = f"inference on {model}"
        try:
            result = client.infer(model, request, model_version=str(version or ""), outputs=wanted,
                                  request_id=request_id)
        except InferenceServerException as exc:
            status = str(exc.status())
            raise answered_error(self.url, what, int(status) if status.isdigit() else None,
                                 one_line(exc.message() or str(exc)), self.key_sent) from exc
        except NETWORK_ERRORS as exc:
            raise unreachable(self.url, exc) from exc
        response = result.get_response()
        return InferenceResult(
            model=str(response.get("model_name", model)),
            version=int(response.get("model_version", version or 0)),
            outputs={name: result.as_numpy(name) for name in outputs},
        )
