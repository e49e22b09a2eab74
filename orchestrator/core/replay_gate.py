"""The replay gate: a candidate's answers to recorded production inputs against the served version's.

Pure: numpy, no server, no files. ``usecases/replay.py`` reads the ring, sends every recorded
input to both and hands the answers here.

    recorded inputs --unseen()--> replayed --compare()--> ReplayObservation --replay_gate()--> Verdict

- ``unseen`` drops what is not a production input: a record equal to a golden input (the
  watcher's probes pass through the traced model and the ensemble's first step too; traced
  tensors carry six significant digits, so "equal" is within 1e-5 relative) and a record equal
  to one kept already (a replay through the served route is recorded again).
- ``compare`` judges detector outputs (BOXES, SCORES, CLASSES, COUNT) by the agreement of the two
  detectors frame by frame (``core/detection.py``), classifier outputs (rows of more than one
  score) by top-1 agreement; a non-finite candidate score never agrees.
- ``replay_gate``: fewer than ``min_samples`` compared inputs is inconclusive, never a pass; and a
  fail only with ``require``. Too few inputs is the normal state of a new ring, not the candidate's fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.core.detection import DetectionOutputs, agreement, decode
from orchestrator.core.policy import ReplayPolicy
from orchestrator.core.verdict import Outcome, Verdict

Tensors = Mapping[str, np.ndarray]
RTOL, ATOL = 1e-5, 1e-7  # a traced tensor's six significant digits
_PREFIX = 64  # elements compared first: most rows differ from every golden row there


@dataclass(frozen=True)
class Unseen:
    records: list[dict[str, np.ndarray]]
    golden: int  # records equal to golden inputs, dropped
    repeated: int  # records equal to an earlier one, dropped


def _rows(array: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray | None:
    """``array`` as rows shaped like a golden sample: (rows, elements), or None when it is not."""
    if array.shape[1:] == row_shape:
        return array.reshape(len(array), -1)
    if array.shape == row_shape:
        return array.reshape(1, -1)
    return None


def _close(rows: np.ndarray, golden: np.ndarray) -> np.ndarray:
    """(rows, golden rows) bool: equal, within the trace's rounding for floats."""
    if rows.dtype.kind == "f" or golden.dtype.kind == "f":
        a, b = rows.astype(np.float64)[:, None, :], golden.astype(np.float64)[None, :, :]
        with np.errstate(invalid="ignore"):
            return (np.abs(a - b) <= ATOL + RTOL * np.abs(b)).all(axis=2)
    return (rows[:, None, :] == golden[None, :, :]).all(axis=2)


def is_golden(record: Tensors, golden: Tensors) -> bool:
    """Every row of the record's first input shared with the golden set equals some golden sample."""
    shared = sorted(set(record) & set(golden))
    if not shared:
        return False
    reference = np.asarray(golden[shared[0]])
    rows = _rows(np.asarray(record[shared[0]]), reference.shape[1:])
    if rows is None or not len(rows) or not len(reference):
        return False
    reference = reference.reshape(len(reference), -1)
    width = min(_PREFIX, rows.shape[1])
    near = _close(rows[:, :width], reference[:, :width])  # cheap: the first elements only
    for row, candidates in zip(rows, near, strict=True):
        found = np.flatnonzero(candidates)
        if not len(found) or not _close(row[None, :], reference[found]).any():
            return False
    return True


def _digest(record: Tensors) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(record):
        array = np.ascontiguousarray(record[name])
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.data)
    return h.digest()


def unseen(records: Sequence[Tensors], golden: Tensors | None) -> Unseen:
    """The records that are production inputs: golden ones and repeats dropped, order kept."""
    kept: list[dict[str, np.ndarray]] = []
    seen: set[bytes] = set()
    golden_count = repeated = 0
    for record in records:
        key = _digest(record)
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        if golden is not None and is_golden(record, golden):
            golden_count += 1
            continue
        kept.append(dict(record))
    return Unseen(kept, golden_count, repeated)


@dataclass(frozen=True)
class ReplayObservation:
    samples: int  # recorded inputs both versions answered and were compared
    kind: str  # "detections", "classes", or "" when the outputs are neither
    top1_agreement: float | None = None
    box_agreement: float | None = None
    count_diff: float | None = None
    broken: str = ""  # the candidate's answers cannot be compared (shape, not detections)
    skipped: int = 0  # recorded inputs not compared (golden, repeated, unreadable, another contract, served errors)

    def metrics(self) -> dict[str, float]:
        found = {"replay_samples": float(self.samples), "replay_skipped": float(self.skipped)}
        for key, value in (("replay_top1_agreement", self.top1_agreement),
                           ("replay_box_agreement", self.box_agreement), ("replay_count_diff", self.count_diff)):
            if value is not None:
                found[key] = round(float(value), 6)
        return found


def is_detector(outputs: Sequence[str]) -> bool:
    return all(name in outputs for name in DetectionOutputs().names())


def compare(pairs: Sequence[tuple[Tensors, Tensors]], outputs: Sequence[str], skipped: int = 0) -> ReplayObservation:
    """(candidate answers, served answers) per recorded input, compared as detections or as classes."""
    if is_detector(outputs):
        return _detections(pairs, skipped)
    if not pairs:
        return ReplayObservation(0, "classes", skipped=skipped)
    return _classes(pairs, outputs[0], skipped)


def _detections(pairs: Sequence[tuple[Tensors, Tensors]], skipped: int) -> ReplayObservation:
    candidate, served = [], []
    for cand, serv in pairs:
        try:
            reference = decode(serv)
        except ValueError:
            skipped += 1  # the served version's own answer is unusable: nothing to compare with
            continue
        try:
            found = decode(cand)
        except ValueError as exc:
            return ReplayObservation(len(candidate), "detections", broken=f"outputs are not detections: {exc}",
                                     skipped=skipped)
        if len(found) != len(reference):
            return ReplayObservation(len(candidate), "detections", broken=f"{len(found)} frames answered for "
                                     f"{len(reference)}", skipped=skipped)
        candidate.append(found)
        served.append(reference)
    if not candidate:
        return ReplayObservation(0, "detections", skipped=skipped)
    together = agreement([f for frames in candidate for f in frames], [f for frames in served for f in frames])
    return ReplayObservation(len(candidate), "detections", box_agreement=together.matched_share,
                             count_diff=together.count_diff, skipped=skipped)


def _classes(pairs: Sequence[tuple[Tensors, Tensors]], output: str, skipped: int) -> ReplayObservation:
    same = rows = compared = 0
    for cand, serv in pairs:
        c, s = np.asarray(cand[output]), np.asarray(serv[output])
        if c.shape != s.shape:
            return ReplayObservation(compared, "classes", broken=f"{output} is {c.shape}, the served version "
                                     f"answers {s.shape}", skipped=skipped)
        width = c.shape[-1] if c.ndim else 1
        if width < 2:
            return ReplayObservation(len(pairs), "", skipped=skipped)  # not class scores
        c2, s2 = c.reshape(-1, width).astype(np.float64), s.reshape(-1, width).astype(np.float64)
        agree = (c2.argmax(axis=1) == s2.argmax(axis=1)) & np.isfinite(c2).all(axis=1)
        same += int(agree.sum())
        rows += len(c2)
        compared += 1
    return ReplayObservation(compared, "classes", top1_agreement=same / rows if rows else None, skipped=skipped)


def replay_gate(observed: ReplayObservation, policy: ReplayPolicy) -> Verdict:
    """Passed, failed, or inconclusive (too few inputs, outputs of no known kind): a fail then only with require."""
    metrics = observed.metrics()
    skipped = f" ({observed.skipped} recorded inputs skipped)" if observed.skipped else ""
    if observed.broken:
        return Verdict(Outcome.FAILED, f"replay of recorded production inputs: {observed.broken}",
                       metric="replay", metrics=metrics)
    unsure = Outcome.FAILED if policy.require else Outcome.INCONCLUSIVE
    if not observed.kind:
        return Verdict(unsure, "replay inconclusive: the outputs are neither class scores nor detections "
                               "(BOXES, SCORES, CLASSES, COUNT)", metric="replay", metrics=metrics)
    if observed.samples < policy.min_samples:
        needs = "; replay.require refuses the promote" if policy.require else ""
        return Verdict(unsure, f"replay inconclusive: {observed.samples} recorded production inputs compared, "
                               f"replay.min_samples is {policy.min_samples}{skipped}{needs}",
                       metric="replay_samples", metrics=metrics)
    if observed.kind == "classes" and observed.top1_agreement is not None:
        if observed.top1_agreement < policy.min_top1_agreement:
            return Verdict(Outcome.FAILED, f"replay of {observed.samples} recorded production inputs: top-1 agreement "
                                           f"with the served version {observed.top1_agreement:.3f} is below "
                                           f"replay.min_top1_agreement {policy.min_top1_agreement:g}",
                           metric="replay_top1_agreement", metrics=metrics)
        return Verdict(Outcome.PASSED, f"replay of {observed.samples} recorded production inputs: top-1 agreement "
                                       f"{observed.top1_agreement:.3f}{skipped}", metrics=metrics)
    if observed.kind == "detections" and observed.box_agreement is not None and observed.count_diff is not None:
        if observed.box_agreement < policy.min_box_agreement:
            return Verdict(Outcome.FAILED, f"replay of {observed.samples} recorded production inputs: box agreement "
                                           f"with the served version {observed.box_agreement:.3f} is below "
                                           f"replay.min_box_agreement {policy.min_box_agreement:g}",
                           metric="replay_box_agreement", metrics=metrics)
        if observed.count_diff > policy.max_count_diff:
            return Verdict(Outcome.FAILED, f"replay of {observed.samples} recorded production inputs: boxes per frame "
                                           f"differ from the served version's by {observed.count_diff:.2f} on "
                                           f"average, above replay.max_count_diff {policy.max_count_diff:g}",
                           metric="replay_count_diff", metrics=metrics)
        return Verdict(Outcome.PASSED, f"replay of {observed.samples} recorded production inputs: box agreement "
                                       f"{observed.box_agreement:.3f}, count diff {observed.count_diff:.2f}{skipped}",
                       metrics=metrics)
    return Verdict(unsure, "replay inconclusive: no answer could be compared", metric="replay", metrics=metrics)


def with_replay(verdict: Verdict, replay: Verdict) -> Verdict:
    """The golden verdict with the replay's metrics added; the replay's failure when it failed (an inconclusive
    replay leaves the golden verdict standing: it is said, not judged)."""
    metrics = {**verdict.metrics, **replay.metrics}
    if replay.outcome is Outcome.FAILED:
        return Verdict(Outcome.FAILED, replay.reason, metric=replay.metric, metrics=metrics)
    return Verdict(verdict.outcome, verdict.reason, verdict.tensor, verdict.metric, metrics)
