"""Detection quality from boxes alone: IoU, COCO-style mAP, agreement of two detectors, decoding.

Pure: numpy only, no server, no files. Boxes are pixels ``x1, y1, x2, y2``.

Matching (per image, per class, per IoU threshold), as pycocotools does it:
    detections are ranked by score, highest first (stable: ties keep input order); each one takes the
    unmatched ground-truth box of its class with the highest IoU (ties: the lowest index), if that IoU
    reaches the threshold, else it is a false positive. A truth is matched at most once, so a second
    detection on it is a false positive. An IoU within 1e-9 below the threshold counts as reaching it,
    so exact ratios (3/5 against 0.6) survive float rounding.

Average precision (one class, one threshold, over all images):
    all detections of the class ranked by score (ties: image order, then rank within the image), the
    precision/recall curve made monotone (running max from the right), then the 101-point
    interpolated AP: the mean of that precision at recall 0, 0.01, ..., 1.0, with precision 0 beyond
    the highest recall reached. Unlike pycocotools there is no cap of 100 detections per image, no
    crowd or area ranges.

mAP: the mean over the classes present in the ground truth. A class with detections but no truth
does not count (``average_precision`` answers None); a class with truth and no detection has AP 0.
With no ground truth at all mAP is 0.0 with ``truths == 0``: callers must read that as "no measure".

Broken outputs: a detection with a non-finite score or box is a false positive that matches nothing,
ranked first (a broken score is not trusted to be low), so NaN can only lower mAP, never raise it.
A non-finite class (or one beyond 2**31) becomes -1, a class no truth table holds.

Agreement of two detectors (no truth): per frame, greedy one-to-one matching of same-class boxes at
IoU >= the threshold, highest IoU first; the share matched is over the larger box count of each frame.

Matching pads all images into (images, detections, truths) tensors, in chunks of bounded size, so that
the only Python loop is over rank positions within an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 ... 0.95, exact
_RECALL_POINTS = np.arange(101) / 100  # exact hundredths: a recall of exactly k/100 lands on its point
_IOU_SLACK = 1e-9
_NO_CLASS = -1


def _as_classes(values: np.ndarray) -> np.ndarray:
    """Integer classes; float classes (many NMS outputs) rounded, non-finite or huge ones -1."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind != "f":
        raise ValueError(f"classes must be numbers, got dtype {values.dtype}")
    usable = np.isfinite(values) & (np.abs(np.where(np.isfinite(values), values, 0.0)) < 2.0**31)
    return np.where(usable, np.rint(np.where(usable, values, 0.0)), _NO_CLASS).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Boxes:
    """Detections (with scores) or ground truth (scores None) of one image."""

    boxes: np.ndarray  # (n, 4) float: x1, y1, x2, y2 in pixels, x2 >= x1, y2 >= y1
    classes: np.ndarray  # (n,) int
    scores: np.ndarray | None = None  # (n,) float for detections

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (n, 4), got shape {boxes.shape}")
        classes = _as_classes(np.asarray(self.classes))
        if classes.shape != (len(boxes),):
            raise ValueError(f"classes must be ({len(boxes)},) like the boxes, got shape {classes.shape}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64)
            if scores.shape != (len(boxes),):
                raise ValueError(f"scores must be ({len(boxes)},) like the boxes, got shape {scores.shape}")
            object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.classes)

    # Arrays make the generated __eq__ ambiguous; equal here means equal values, NaN equal to NaN.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Boxes):
            return NotImplemented
        if (self.scores is None) != (other.scores is None):
            return False
        return (np.array_equal(self.boxes, other.boxes, equal_nan=True)
                and np.array_equal(self.classes, other.classes)
                and (self.scores is None or np.array_equal(self.scores, other.scores, equal_nan=True)))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside: not hashable

    @staticmethod
    def empty() -> Boxes:
        return Boxes(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))


def _box_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be (n, 4) boxes, got shape {array.shape}")
    return array


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU over the last two axes: a (..., n, 4) with b (..., m, 4) -> (..., n, m)."""
    with np.errstate(invalid="ignore", over="ignore"):
        area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
        area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
        width = np.minimum(a[..., :, None, 2], b[..., None, :, 2]) - np.maximum(a[..., :, None, 0], b[..., None, :, 0])
        height = np.minimum(a[..., :, None, 3], b[..., None, :, 3]) - np.maximum(a[..., :, None, 1], b[..., None, :, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        union = area_a[..., :, None] + area_b[..., None, :] - inter
        iou = np.zeros(inter.shape)
        np.divide(inter, union, out=iou, where=union > 0)  # a NaN union fails the test too
    iou[~np.isfinite(iou)] = 0.0
    return iou


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4): (n, m), 0 for zero-area or non-finite."""
    return _iou(_box_array(a, "a"), _box_array(b, "b"))


def _check_iou(iou: float) -> None:
    # IoU 0 would match any two boxes of a class, however far apart.
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"an IoU threshold must be in (0, 1], got {iou}")


def _rank_keys(scores: np.ndarray) -> np.ndarray:
    """Sort keys of detections: the score, +inf for a non-finite one (ranked first, as a false positive)."""
    return np.where(np.isfinite(scores), scores, np.inf)


_PAD_BUDGET = 1 << 21  # padded (images x detections x truths) cells per chunk: bounded memory for any set


@dataclass(frozen=True)
class _Ranked:
    """All detections of a set of images, image by image and by rank within an image."""

    classes: np.ndarray  # (N,)
    keys: np.ndarray  # (N,) sort keys (_rank_keys)
    order: np.ndarray  # (N,) index into the images' detections concatenated in input order
    hits: np.ndarray  # (thresholds, N) true positive at each threshold


def _flat(frames: Sequence[Boxes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.fromiter((len(frame) for frame in frames), dtype=np.int64, count=len(frames))
    boxes = np.concatenate([frame.boxes for frame in frames]) if frames else np.zeros((0, 4))
    classes = np.concatenate([frame.classes for frame in frames]) if frames else np.zeros(0, dtype=np.int64)
    return counts, boxes, classes


def _chunks(dets: np.ndarray, truths: np.ndarray) -> list[tuple[int, int]]:
    """Runs of images whose padded tensors stay within the budget (one image alone may exceed it)."""
    runs, start, wide, deep = [], 0, 0, 0
    for image, (d, t) in enumerate(zip(dets.tolist(), truths.tolist(), strict=True)):
        wide, deep = max(wide, d), max(deep, t)
        if image > start and (image + 1 - start) * wide * deep > _PAD_BUDGET:
            runs.append((start, image))
            start, wide, deep = image, d, t
    runs.append((start, len(dets)))
    return runs


def _match_images(detections: Sequence[Boxes], truths: Sequence[Boxes], thresholds: np.ndarray) -> _Ranked:
    """Greedy matching of every image at every threshold.

    Images are padded into (images, detections, truths) tensors so that the only Python loop is over rank
    positions: the k-th ranked detection of every image, at every threshold, takes its truth in one step.
    """
    det_counts, boxes, classes = _flat(detections)
    truth_counts, truth_boxes, truth_classes = _flat(truths)
    scores = np.concatenate([d.scores if d.scores is not None else np.zeros(len(d)) for d in detections]
                            ) if detections else np.zeros(0)
    usable = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    keys = _rank_keys(scores)
    image = np.repeat(np.arange(len(detections)), det_counts)
    det_start = np.concatenate([[0], np.cumsum(det_counts)])
    truth_image = np.repeat(np.arange(len(truths)), truth_counts)
    truth_start = np.concatenate([[0], np.cumsum(truth_counts)])
    # Image by image (already so), by score within an image; stable: ties keep input order.
    by_score = np.argsort(-keys, kind="stable")
    order = by_score[np.argsort(image[by_score], kind="stable")]
    boxes, classes, usable, keys = boxes[order], classes[order], usable[order], keys[order]
    rank = np.arange(len(order)) - det_start[image]
    truth_slot = np.arange(len(truth_image)) - truth_start[truth_image]
    hits = np.zeros((len(thresholds), len(order)), dtype=bool)
    reach = thresholds - _IOU_SLACK  # all > 0: a masked -1 never reaches
    for lo, hi in _chunks(det_counts, truth_counts):
        wide, deep = int(det_counts[lo:hi].max(initial=0)), int(truth_counts[lo:hi].max(initial=0))
        if not wide or not deep:
            continue
        dets = slice(det_start[lo], det_start[hi])
        gts = slice(truth_start[lo], truth_start[hi])
        at_d, at_t = (image[dets] - lo, rank[dets]), (truth_image[gts] - lo, truth_slot[gts])
        pad_boxes, pad_truths = np.zeros((hi - lo, wide, 4)), np.zeros((hi - lo, deep, 4))
        pad_boxes[at_d], pad_truths[at_t] = boxes[dets], truth_boxes[gts]
        pad_classes, pad_truth_classes = np.zeros((hi - lo, wide), np.int64), np.zeros((hi - lo, deep), np.int64)
        pad_classes[at_d], pad_truth_classes[at_t] = classes[dets], truth_classes[gts]
        live, real = np.zeros((hi - lo, wide), bool), np.zeros((hi - lo, deep), bool)
        live[at_d], real[at_t] = usable[dets], True
        same = (pad_classes[:, :, None] == pad_truth_classes[:, None, :]) & live[:, :, None] & real[:, None, :]
        iou = np.where(same, _iou(pad_boxes, pad_truths), -1.0)  # (images, wide, deep)
        free = np.ones((hi - lo, len(thresholds), deep), dtype=bool)
        found = np.zeros((hi - lo, len(thresholds), wide), dtype=bool)
        images = np.arange(hi - lo)[:, None]
        steps = np.arange(len(thresholds))[None, :]
        # A rank that reaches no threshold in any image is a false positive everywhere: skipped.
        for k in np.flatnonzero((iou.max(axis=2) >= reach.min()).any(axis=0)).tolist():
            row = iou[:, None, k, :]  # (images, 1, deep)
            candidates = np.where(free & (row >= reach[None, :, None]), row, -1.0)
            best = candidates.argmax(axis=2)  # (images, thresholds): highest IoU, lowest index on ties
            hit = np.take_along_axis(candidates, best[:, :, None], axis=2)[:, :, 0] >= 0.0
            found[:, :, k] = hit
            free[np.broadcast_to(images, hit.shape)[hit], np.broadcast_to(steps, hit.shape)[hit], best[hit]] = False
        hits[:, dets] = found[at_d[0], :, at_d[1]].T
    return _Ranked(classes, keys, order, hits)


def match(detections: Boxes, truths: Boxes, iou: float = 0.5) -> np.ndarray:
    """True-positive flags of one image's detections at one IoU threshold, (n,) bool in input order."""
    _check_iou(iou)
    ranked = _match_images([detections], [truths], np.array([iou]))
    flags = np.zeros(len(detections), dtype=bool)
    flags[ranked.order] = ranked.hits[0]
    return flags


def _interpolated_ap(hits: np.ndarray, truths: int) -> np.ndarray:
    """101-point AP per threshold from true-positive flags (thresholds, n) ranked by score."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0])
    tp = np.cumsum(hits, axis=1)
    recall = tp / truths
    precision = tp / np.arange(1, hits.shape[1] + 1)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap = np.empty(hits.shape[0])
    for t in range(hits.shape[0]):
        at = np.searchsorted(recall[t], _RECALL_POINTS, side="left")
        reached = at < hits.shape[1]
        ap[t] = precision[t, at[reached]].sum() / len(_RECALL_POINTS)
    return ap


def _per_class_ap(detections: Sequence[Boxes], truths: Sequence[Boxes],
                  thresholds: np.ndarray) -> tuple[dict[int, np.ndarray], int, int]:
    """AP per threshold of every class present in the ground truth; the truth and detection counts."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections for {len(truths)} of ground truth")
    for index, found in enumerate(detections):
        if len(found) and found.scores is None:
            raise ValueError(f"detections of image {index} have no scores")
    ranked = _match_images(detections, truths, thresholds)
    truth_classes = np.concatenate([t.classes for t in truths]) if truths else np.zeros(0, dtype=np.int64)
    present, counts = np.unique(truth_classes, return_counts=True)
    result = {}
    for cls, count in zip(present.tolist(), counts.tolist(), strict=True):
        chosen = np.flatnonzero(ranked.classes == cls)
        # Stable: ties across images keep image order, within an image the rank order.
        chosen = chosen[np.argsort(-ranked.keys[chosen], kind="stable")]
        result[cls] = _interpolated_ap(ranked.hits[:, chosen], count)
    return result, len(truth_classes), len(ranked.classes)


def average_precision(detections: Sequence[Boxes], truths: Sequence[Boxes], cls: int, iou: float) -> float | None:
    """AP of one class at one IoU threshold over a set of images; None when the class has no ground truth."""
    _check_iou(iou)
    per_class, _, _ = _per_class_ap(detections, truths, np.array([iou]))
    return float(per_class[cls][0]) if cls in per_class else None


@dataclass(frozen=True)
class MapReport:
    map50: float  # mean over classes present in the ground truth of AP at IoU 0.5
    map50_95: float  # mean over classes and over IOU_THRESHOLDS
    per_class50: dict[int, float]  # class -> AP@0.5 (only classes with ground truth)
    per_class50_95: dict[int, float]
    truths: int  # ground-truth boxes counted; 0 means there was nothing to measure
    detections: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        metrics = {f"{prefix}map50": self.map50, f"{prefix}map50_95": self.map50_95}
        metrics.update({f"{prefix}ap50_class_{cls}": ap for cls, ap in sorted(self.per_class50.items())})
        return metrics


def mean_average_precision(detections: Sequence[Boxes], truths: Sequence[Boxes]) -> MapReport:
    """COCO mAP@0.5 and mAP@0.5:0.95 of detections against ground truth, image by image."""
    per_class, truth_count, detection_count = _per_class_ap(detections, truths, np.array(IOU_THRESHOLDS))
    per_class50 = {cls: float(ap[0]) for cls, ap in per_class.items()}
    per_class50_95 = {cls: float(ap.mean()) for cls, ap in per_class.items()}
    return MapReport(
        map50=float(np.mean(list(per_class50.values()))) if per_class else 0.0,
        map50_95=float(np.mean(list(per_class50_95.values()))) if per_class else 0.0,
        per_class50=per_class50,
        per_class50_95=per_class50_95,
        truths=truth_count,
        detections=detection_count,
    )


@dataclass(frozen=True)
class Agreement:
    """How far two models' detections on the same frames agree (served vs fallback, candidate vs served)."""

    # Boxes matched one-to-one at IoU >= iou with the same class, over the larger of the two box counts,
    # summed over frames (1.0 when both found nothing anywhere).
    matched_share: float
    count_diff: float  # mean over frames of |len(a) - len(b)|
    frames: int
    boxes_a: int
    boxes_b: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}matched_share": self.matched_share, f"{prefix}count_diff": self.count_diff,
                f"{prefix}frames": float(self.frames), f"{prefix}boxes_a": float(self.boxes_a),
                f"{prefix}boxes_b": float(self.boxes_b)}


def _matched_pairs(a: Boxes, b: Boxes, iou: float) -> int:
    """Greedy one-to-one matches of one frame, highest IoU first (ties: a's order, then b's)."""
    if not len(a) or not len(b):
        return 0
    overlap = iou_matrix(a.boxes, b.boxes)
    rows, cols = np.nonzero((a.classes[:, None] == b.classes[None, :]) & (overlap >= iou - _IOU_SLACK))
    used_a: set[int] = set()
    used_b: set[int] = set()
    for k in np.argsort(-overlap[rows, cols], kind="stable").tolist():
        i, j = int(rows[k]), int(cols[k])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


def agreement(a: Sequence[Boxes], b: Sequence[Boxes], iou: float = 0.5) -> Agreement:
    """Agreement of two detectors frame by frame; scores are ignored (both are already thresholded)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames against {len(b)}: agreement needs the same frames")
    _check_iou(iou)
    matched = larger = diff = 0
    for frame_a, frame_b in zip(a, b, strict=True):
        matched += _matched_pairs(frame_a, frame_b, iou)
        larger += max(len(frame_a), len(frame_b))
        diff += abs(len(frame_a) - len(frame_b))
    return Agreement(
        matched_share=matched / larger if larger else 1.0,
        count_diff=diff / len(a) if len(a) else 0.0,
        frames=len(a),
        boxes_a=sum(len(frame) for frame in a),
        boxes_b=sum(len(frame) for frame in b),
    )


def detections_per_frame(frames: Sequence[Boxes]) -> np.ndarray:
    """Boxes per frame, (frames,) int."""
    return np.fromiter((len(frame) for frame in frames), dtype=np.int64, count=len(frames))


def class_shares(frames: Sequence[Boxes], classes: int) -> np.ndarray:
    """Share of all boxes per class 0..classes-1; boxes of other classes count in the total only (shares then
    sum below 1, which a drift check sees); zeros when there are no boxes."""
    if classes < 0:
        raise ValueError(f"classes must be >= 0, got {classes}")
    found = np.concatenate([frame.classes for frame in frames]) if frames else np.zeros(0, dtype=np.int64)
    if not len(found):
        return np.zeros(classes)
    inside = found[(found >= 0) & (found < classes)]
    return np.bincount(inside, minlength=classes)[:classes] / len(found)


@dataclass(frozen=True)
class DetectionOutputs:
    """Names of the padded per-frame tensors a detector (the sample ensemble, YOLO-style NMS) answers with."""

    boxes: str = "BOXES"  # (batch, K, 4) float
    scores: str = "SCORES"  # (batch, K)
    classes: str = "CLASSES"  # (batch, K) int or float
    count: str = "COUNT"  # (batch, 1) or (batch,) int: valid rows per frame

    def names(self) -> list[str]:
        return [self.boxes, self.scores, self.classes, self.count]


def _tensor(outputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in outputs:
        raise ValueError(f"no output {name!r} among {sorted(outputs)}")
    return np.asarray(outputs[name])


_DEFAULT_OUTPUTS = DetectionOutputs()


def decode(outputs: Mapping[str, np.ndarray], names: DetectionOutputs = _DEFAULT_OUTPUTS) -> list[Boxes]:
    """Per-frame Boxes from padded outputs; raises ValueError naming the tensor on inconsistent shapes or a
    count outside 0..K. NaN values are kept (a sanity check elsewhere reports them); a NaN class becomes -1."""
    boxes = _tensor(outputs, names.boxes)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"{names.boxes} must be (batch, K, 4), got shape {boxes.shape}")
    batch, k = boxes.shape[:2]
    scores, classes = _tensor(outputs, names.scores), _tensor(outputs, names.classes)
    for name, values in ((names.scores, scores), (names.classes, classes)):
        if values.shape != (batch, k):
            raise ValueError(f"{name} must be (batch, K) = ({batch}, {k}) like {names.boxes}, got shape {values.shape}")
    count = _tensor(outputs, names.count)
    if count.shape not in ((batch,), (batch, 1)):
        raise ValueError(f"{names.count} must be ({batch},) or ({batch}, 1), got shape {count.shape}")
    if count.dtype.kind not in "iuf":
        raise ValueError(f"{names.count} must be numbers, got dtype {count.dtype}")
    counts = count.reshape(batch).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(counts) | (counts < 0) | (counts > k) | (counts != np.rint(counts))
    if bad.any():
        frame = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{names.count} of frame {frame} is {counts[frame]:g}, not a row count in 0..{k}")
    return [Boxes(boxes[frame, :n], classes[frame, :n], scores[frame, :n])
            for frame, n in enumerate(counts.astype(np.int64).tolist())]


def truths_from_table(table: np.ndarray, frames: int) -> list[Boxes]:
    """Ground truth stored as one float array of rows (frame_index, class, x1, y1, x2, y2), as in a golden set's
    truth.npy; ValueError on a bad shape or a frame index outside 0..frames-1 (and on a negative, fractional or
    non-finite class or a non-finite coordinate: a corrupt truth file must not pass as a measure)."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 1 and table.size == 0:
        table = table.reshape(0, 6)  # np.save of an empty list
    if table.ndim != 2 or table.shape[1] != 6:
        raise ValueError(f"a truth table is rows of (frame, class, x1, y1, x2, y2), got shape {table.shape}")
    index, classes = table[:, 0], table[:, 1]
    with np.errstate(invalid="ignore"):
        bad_index = ~np.isfinite(index) | (index != np.rint(index)) | (index < 0) | (index >= frames)
        bad_class = ~np.isfinite(classes) | (classes != np.rint(classes)) | (classes < 0)
    if bad_index.any():
        row = int(np.flatnonzero(bad_index)[0])
        raise ValueError(f"truth row {row} has frame index {index[row]:g}, outside 0..{frames - 1}")
    if bad_class.any():
        row = int(np.flatnonzero(bad_class)[0])
        raise ValueError(f"truth row {row} has class {classes[row]:g}, not a class number")
    if not np.isfinite(table[:, 2:]).all():
        row = int(np.flatnonzero(~np.isfinite(table[:, 2:]).all(axis=1))[0])
        raise ValueError(f"truth row {row} has a non-finite box")
    frame_of = index.astype(np.int64)
    order = np.argsort(frame_of, kind="stable")  # rows of a frame keep their file order
    bounds = np.searchsorted(frame_of[order], np.arange(frames + 1), side="left")
    return [Boxes(table[order[start:end], 2:], classes[order[start:end]].astype(np.int64))
            for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def truth_table(truths: Sequence[Boxes]) -> np.ndarray:
    """The inverse of ``truths_from_table``: (m, 6) float32 rows in frame order."""
    rows = [np.column_stack([np.full(len(t), frame, dtype=np.float64), t.classes.astype(np.float64), t.boxes])
            for frame, t in enumerate(truths) if len(t)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 6), dtype=np.float32)
