"""The golden set of a model: fixed inputs with known answers, as values.

A classifier's answers are ``labels`` (one class per sample); a detector's are ``truths`` (boxes and
classes per frame, ``core/detection.py``). A set with neither still serves the sanity checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.core.detection import Boxes


@dataclass(frozen=True)
class GoldenSet:
    inputs: dict[str, np.ndarray]  # input name -> batch of samples
    labels: np.ndarray | None
    truths: tuple[Boxes, ...] | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def detects(self) -> bool:
        return self.truths is not None

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        return [{name: array[i:i + batch_size] for name, array in self.inputs.items()}
                for i in range(0, self.size, batch_size)]
