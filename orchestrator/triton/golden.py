"""Running the golden set through a server: the same batches for a candidate, the served version or a probe."""

from __future__ import annotations

import numpy as np

from orchestrator.core.golden import GoldenSet
from orchestrator.triton.protocol import OWN_REQUEST, TritonAPI


def run_golden(triton: TritonAPI, model: str, version: int | None, golden: GoldenSet, outputs: list[str],
               batch_size: int) -> dict[str, np.ndarray]:
    """Every golden sample through ``model`` (a given version or the default route), outputs concatenated."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for batch in golden.batches(batch_size):
        result = triton.infer(model, batch, outputs, version=version, request_id=OWN_REQUEST)
        for name in outputs:
            collected[name].append(result.outputs[name])
    return {name: np.concatenate(parts) for name, parts in collected.items()}
