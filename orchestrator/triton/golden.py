"""The golden set of a model: fixed inputs with known labels, run through a version to score it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.metafile import Contract
from orchestrator.triton.client import Triton


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


def load_golden(folder: Path, contract: Contract) -> GoldenSet | None:
    """``inputs.npy`` (single-input models) or ``<INPUT>.npy`` per input, and optional ``labels.npy``."""
    if not folder.is_dir():
        return None
    names = [t.name for t in contract.inputs]
    files = {n: folder / f"{n}.npy" for n in names}
    if len(names) == 1 and not files[names[0]].exists():
        files = {names[0]: folder / "inputs.npy"}
    try:
        inputs = {name: np.load(path, allow_pickle=False) for name, path in files.items()}
        labels = np.load(folder / "labels.npy", allow_pickle=False) if (folder / "labels.npy").exists() else None
    except (OSError, ValueError) as exc:
        raise RepositoryCorrupt(f"golden set in {folder} is unreadable: {exc}") from exc
    sizes = {len(a) for a in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(sizes) != 1 or 0 in sizes:
        raise RepositoryCorrupt(f"golden set in {folder}: inputs and labels differ in length or are empty")
    return GoldenSet(inputs, labels)


def run_golden(triton: Triton, model: str, version: int | None, golden: GoldenSet, outputs: list[str],
               batch_size: int) -> dict[str, np.ndarray]:
    """Every golden sample through ``model`` (a given version or the default route), outputs concatenated."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for batch in golden.batches(batch_size):
        result = triton.infer(model, batch, outputs, version=version)
        for name in outputs:
            collected[name].append(result.outputs[name])
    return {name: np.concatenate(parts) for name, parts in collected.items()}
