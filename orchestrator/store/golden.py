"""The golden set on disk: ``<state>/<model>/<golden>/inputs.npy`` (or ``<INPUT>.npy``), and ``labels.npy`` (a
classifier's class per sample) or ``truth.npy`` (a detector's boxes: rows of frame, class, x1, y1, x2, y2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.core.detection import truths_from_table
from orchestrator.core.golden import GoldenSet
from orchestrator.core.model import Contract
from orchestrator.errors import RepositoryCorrupt

TRUTH_FILE = "truth.npy"


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
        table = np.load(folder / TRUTH_FILE, allow_pickle=False) if (folder / TRUTH_FILE).exists() else None
    except (OSError, ValueError) as exc:
        raise RepositoryCorrupt(f"golden set in {folder} is unreadable: {exc}") from exc
    sizes = {len(a) for a in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(sizes) != 1 or 0 in sizes:
        raise RepositoryCorrupt(f"golden set in {folder}: inputs and labels differ in length or are empty")
    if labels is not None and table is not None:
        raise RepositoryCorrupt(f"golden set in {folder} has both labels.npy and {TRUTH_FILE}: keep the one that "
                                f"fits the model (labels: a classifier, truth: a detector)")
    truths = None
    if table is not None:
        try:
            truths = tuple(truths_from_table(table, sizes.pop()))
        except ValueError as exc:
            raise RepositoryCorrupt(f"golden set in {folder}: {TRUTH_FILE}: {exc}") from exc
    return GoldenSet(inputs, labels, truths)


def truth_classes(folder: Path) -> int | None:
    """How many classes a detector's golden truth names (its highest class + 1); None without truth.npy. Reads
    that file alone (the watcher and ``status`` size a detector's class shares with it)."""
    path = folder / TRUTH_FILE
    if not path.exists():
        return None
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RepositoryCorrupt(f"golden set in {folder}: {TRUTH_FILE} is unreadable: {exc}") from exc
    if table.size == 0:
        return None  # frames without objects name no class
    if table.ndim != 2 or table.shape[1] != 6 or not np.isfinite(table[:, 1]).all():
        raise RepositoryCorrupt(f"golden set in {folder}: {TRUTH_FILE} is not rows of (frame, class, x1, y1, x2, y2) "
                                f"with a class each")
    return int(table[:, 1].max()) + 1
