"""A ``client.Triton`` made on first use: a command that never talks to Triton (``history``,
``import``, a command refused before any server call) never imports tritonclient and gevent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.triton.client import Triton


class LazyTriton:
    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 10.0,
                 load_timeout_s: float = 600.0) -> None:
        self.url = url if "://" in url else f"http://{url}"  # as client.Triton spells it
        self._arguments = (url, admin_key, timeout_s, load_timeout_s)
        self._triton: Triton | None = None

    def connected(self) -> Triton:
        if self._triton is None:
            from orchestrator.triton.client import Triton  # noqa: PLC0415 - tritonclient.http, gevent

            self._triton = Triton(*self._arguments)
        return self._triton

    def close(self) -> None:
        if self._triton is not None:
            self._triton.close()

    def __getattr__(self, name: str) -> Any:  # only for what this class lacks: the client's methods
        return getattr(self.connected(), name)
