"""An ensemble's steps run one by one from the client, with one model pinned to a version.

Triton's ensemble sends its step to the highest READY version; the watcher also needs the
fallback's answers through the same pre- and post-processing (its baseline), without loading
another ensemble into production. Run only where a few requests per switch are fine.
"""

from __future__ import annotations

import numpy as np

from orchestrator.core.ensemble import Ensemble
from orchestrator.triton.protocol import TritonAPI


def run_route(triton: TritonAPI, route: Ensemble, model: str, version: int | None,
              inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """``route`` on ``inputs`` with ``model``'s steps sent to ``version`` (None: default routing)."""
    tensors = dict(inputs)
    for step in route.order():
        feeds = {own: tensors[source] for own, source in step.inputs}
        wanted = [own for own, _ in step.outputs]
        pinned = version if step.model == model else (None if step.version < 0 else step.version)
        result = triton.infer(step.model, feeds, wanted, version=pinned)
        for own, target in step.outputs:
            tensors[target] = result.outputs[own]
    return {name: tensors[name] for name in outputs}
