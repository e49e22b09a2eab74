"""The sample detector's pre-processing and NMS in plain numpy: one implementation, two users.

``orchestrator.sample.detector`` imports it to score the golden set in-process, and the
python-backend steps ``detector_pre`` and ``detector_nms`` ship it beside their ``model.py``
(the python backend puts the version folder on ``sys.path``), so what the ensemble serves
and what the generator measures are the same code. numpy only: no orchestrator imports.

The network's head, RAW [cells, 5 + classes] per frame, row ``r * GRID + c`` for grid cell
(r, c), columns: objectness logit, tx, ty (the box centre inside the cell, in cells), tw, th
(the box size, in cells), then one logit per class.
"""

from __future__ import annotations

import numpy as np

HEIGHT = WIDTH = 64
STRIDE = 8
GRID = HEIGHT // STRIDE
CELLS = GRID * GRID
CLASSES = 4
FIELDS = 5 + CLASSES
MAX_DETECTIONS = 32  # K: rows of BOXES/SCORES/CLASSES, padded with zeros
SCORE_THRESHOLD = 0.05
IOU_THRESHOLD = 0.45
MEAN, STD = 0.5, 0.25  # the network's input normalisation: (pixel / 255 - MEAN) / STD


def preprocess(images: np.ndarray) -> np.ndarray:
    """Camera frames, uint8 [N, H, W, 3] (HWC), as the network's input, float32 [N, 3, H, W] normalised."""
    scaled = images.astype(np.float32) * np.float32(1 / (255 * STD)) - np.float32(MEAN / STD)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def decode_head(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's head [CELLS, FIELDS] as candidate boxes [CELLS, 4] (x1, y1, x2, y2 pixels), scores
    (objectness x class probability of the best class) and classes. NaN in the head stays NaN."""
    raw = raw.astype(np.float32).reshape(CELLS, FIELDS)
    rows, cols = np.divmod(np.arange(CELLS, dtype=np.float32), GRID)
    cx = (cols + raw[:, 1]) * STRIDE
    cy = (rows + raw[:, 2]) * STRIDE
    half_w, half_h = raw[:, 3] * (STRIDE / 2), raw[:, 4] * (STRIDE / 2)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32)
    probs = _softmax(raw[:, 5:])
    classes = probs.argmax(axis=1).astype(np.int32)
    scores = _sigmoid(raw[:, 0]) * probs[np.arange(CELLS), classes]
    return boxes, scores.astype(np.float32), classes


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with each of ``others`` [M, 4] (x1, y1, x2, y2)."""
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area + areas - inter)


def nms_frame(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float = SCORE_THRESHOLD,
              iou_threshold: float = IOU_THRESHOLD, k: int = MAX_DETECTIONS
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy per-class NMS of one frame's candidates: BOXES [k, 4], SCORES [k], CLASSES [k], COUNT [1].

    A candidate whose score is NaN is kept (``~(score < threshold)``) and ranks last, so a network
    emitting NaN yields NaN in the outputs (a sanity check catches it) instead of "no detections"."""
    keep = np.flatnonzero(~(scores < score_threshold))
    # Highest score first; NaN sorts last, ties keep the cell order: the same answer on every machine.
    order = keep[np.argsort(-scores[keep], kind="stable")]
    chosen: list[int] = []
    for index in order:
        if len(chosen) == k:
            break
        same = [c for c in chosen if classes[c] == classes[index]]
        if same and (iou(boxes[index], boxes[same]) > iou_threshold).any():
            continue
        chosen.append(int(index))
    out_boxes = np.zeros((k, 4), np.float32)
    out_scores = np.zeros(k, np.float32)
    out_classes = np.zeros(k, np.int32)
    count = len(chosen)
    out_boxes[:count], out_scores[:count], out_classes[:count] = boxes[chosen], scores[chosen], classes[chosen]
    return out_boxes, out_scores, out_classes, np.array([count], np.int32)


def postprocess(raw: np.ndarray, score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
                k: int = MAX_DETECTIONS) -> dict[str, np.ndarray]:
    """The network's RAW [N, CELLS, FIELDS] as the ensemble's outputs: BOXES [N, k, 4], SCORES [N, k],
    CLASSES [N, k] (int32), COUNT [N, 1] (int32)."""
    frames = [nms_frame(*decode_head(frame), score_threshold, iou_threshold, k) for frame in raw]
    names = ("BOXES", "SCORES", "CLASSES", "COUNT")
    return {name: np.stack([frame[i] for frame in frames]) for i, name in enumerate(names)}
