"""The golden set of a model: fixed inputs with known labels, as values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GoldenSet:
    inputs: dict[str, np.ndarray]  # input name -> batch of samples
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        return [{name: array[i:i + batch_size] for name, array in self.inputs.items()}
                for i in range(0, self.size, batch_size)]
