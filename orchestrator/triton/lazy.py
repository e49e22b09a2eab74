"""The client the use cases make from the settings: nothing in it waits to be made any more.

``client.Triton`` opens no connection until its first call, speaks the control API over the
stdlib (``control.TritonControl``) and imports tritonclient and gevent on its first ``infer``
only, so ``status``, ``rollback`` and a command that never talks to Triton (``history``,
``import``) load neither. The name stays for ``usecases.context``.
"""

from __future__ import annotations

from orchestrator.triton.client import Triton


class LazyTriton(Triton):
    """``Triton``: control calls on a kept-alive stdlib connection, tritonclient on the first ``infer``."""
