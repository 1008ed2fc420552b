"""Raw detector outputs to detections, in numpy alone: box decoding, score threshold, class-aware NMS.

This file imports nothing but numpy (and the standard library) and runs on Python 3.9+, so it is
copied as it is beside the standalone device agent (`edgecnn/runtime/agent.py`): the host and the
device decode one way. A model's exported graph ends at its raw head tensor; what that tensor
holds is described by a *head spec*, a JSON-able dict that travels with the model:

    {"kind": "fcos", "strides": [8, 16], "num_classes": 10, "input_size": [96, 96]}

`fcos` (edgecnn's zoo detectors, `edgecnn/models/zoo_detect.py`): one tensor (N, L, 5 + C) over
the L locations of every level, level after level, row-major within a level. A level of stride s
has ceil(H/s) x ceil(W/s) locations centred at ((j + 0.5) s, (i + 0.5) s). Per location: four
log-distances in stride units to the box's left, top, right and bottom sides
(distance = exp(v) * s), a centerness logit, and C class logits; a class's score is
sqrt(sigmoid(class) * sigmoid(centerness)).

Boxes are (x1, y1, x2, y2) in pixels of the model input (continuous coordinates: the image spans
0..W and 0..H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCORE_THRESHOLD = 0.05  # low on purpose: COCO mAP integrates over every confidence
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100  # COCO's maxDets
PRE_NMS_TOP_K = 1000
MAX_LOG_DISTANCE = 10.0  # exp() of larger raw values overflows float32 long before it means anything


@dataclass
class Detections:
    """One image's detections: boxes (k, 4) xyxy float32, scores (k,) float32, classes (k,) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep: np.ndarray) -> Detections:
        """The detections selected by a boolean mask or index array."""
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4): (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = (float(np.abs(boxes).max()) + 1.0) * classes.astype(np.float64)
    return nms(boxes.astype(np.float64) + offset[:, None], scores, iou_threshold)


def fcos_locations(strides: list[int], input_size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (L, 2) as (x, y) and the stride (L,) of every location of an `fcos` head, in output order."""
    h, w = input_size
    centers, stride_of = [], []
    for s in strides:
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
        centers.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
        stride_of.append(np.full(gh * gw, s, np.float32))
    return np.concatenate(centers), np.concatenate(stride_of)


def fcos_boxes(raw_box: np.ndarray, centers: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(..., L, 4) raw log-distances to (..., L, 4) xyxy boxes."""
    d = np.exp(np.clip(raw_box.astype(np.float32), -MAX_LOG_DISTANCE, MAX_LOG_DISTANCE)) * strides[:, None]
    return np.concatenate([centers - d[..., :2], centers + d[..., 2:]], -1)


def _check_fcos(raw: np.ndarray, head: dict) -> None:
    n_loc = sum(math.ceil(head["input_size"][0] / s) * math.ceil(head["input_size"][1] / s) for s in head["strides"])
    want = (n_loc, 5 + int(head["num_classes"]))
    if raw.ndim != 3 or tuple(raw.shape[1:]) != want:
        raise ValueError(f"an fcos head of {head} outputs (N, {want[0]}, {want[1]}), got {tuple(raw.shape)}")


def decode_fcos(
    raw: np.ndarray,
    head: dict,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
) -> list[Detections]:
    """Detections of every image of an `fcos` head's raw output (N, L, 5 + C)."""
    raw = np.asarray(raw, np.float32)
    _check_fcos(raw, head)
    h, w = head["input_size"]
    centers, strides = fcos_locations(head["strides"], head["input_size"])
    scores = np.sqrt(sigmoid(raw[..., 5:]) * sigmoid(raw[..., 4:5]))  # N, L, C
    out = []
    for i in range(len(raw)):
        loc, cls = np.nonzero(scores[i] > score_threshold)
        sc = scores[i][loc, cls]
        if len(sc) > pre_nms_top_k:
            top = np.argpartition(-sc, pre_nms_top_k - 1)[:pre_nms_top_k]
            loc, cls, sc = loc[top], cls[top], sc[top]
        boxes = fcos_boxes(raw[i, loc, :4], centers[loc], strides[loc])
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = batched_nms(boxes, sc, cls, iou_threshold)[:max_detections]
        out.append(Detections(boxes[keep], sc[keep].astype(np.float32), cls[keep].astype(np.int64)))
    return out


DECODERS = {"fcos": decode_fcos}


def decode(raw: np.ndarray, head: dict, **options) -> list[Detections]:
    """Detections of every image of a raw head output, by the head spec's kind (see DECODERS)."""
    kind = head.get("kind")
    if kind not in DECODERS:
        raise ValueError(f"unknown detection head kind {kind!r}; known: {', '.join(DECODERS)}")
    return DECODERS[kind](raw, head, **options)


def to_arrays(dets: list[Detections]) -> dict[str, np.ndarray]:
    """Every image's detections as flat arrays (for an .npz): image index, boxes, scores, classes."""
    index = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(dets)] or [np.zeros(0, np.int64)])
    cat = [d for d in dets if len(d)] or [Detections.empty()]
    return {
        "image": index,
        "boxes": np.concatenate([d.boxes for d in cat]).astype(np.float32),
        "scores": np.concatenate([d.scores for d in cat]).astype(np.float32),
        "classes": np.concatenate([d.classes for d in cat]).astype(np.int64),
        "images": np.array(len(dets), np.int64),
    }


def from_arrays(arrays: dict[str, np.ndarray]) -> list[Detections]:
    """The inverse of `to_arrays`."""
    n, image = int(arrays["images"]), np.asarray(arrays["image"])
    return [
        Detections(arrays["boxes"][image == i], arrays["scores"][image == i], arrays["classes"][image == i])
        for i in range(n)
    ]
