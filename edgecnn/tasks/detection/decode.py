"""Raw detector outputs to detections, in numpy alone: box decoding, score threshold, class-aware NMS.

This file imports nothing but numpy (and the standard library) and runs on Python 3.9+, so it is
copied as it is beside the standalone device agent (`edgecnn/runtime/agent.py`): the host and the
device decode one way. A model's exported graph ends at its raw head tensor; what that tensor
holds is described by a *head spec*, a JSON-able dict that travels with the model:

    {"kind": "center_size", "strides": [8, 16], "num_classes": 10, "input_size": [96, 96]}

`center_size` (edgecnn's zoo detectors, `edgecnn/models/zoo_detect.py`; anchor-free, one
prediction per location as in FCOS and YOLOX): one tensor (N, L, 5 + C) over the L locations of
every level, level after level, row-major within a level. A level of stride s has ceil(H/s) x
ceil(W/s) locations centred at ((j + 0.5) s, (i + 0.5) s). Per location: the box centre's offset
from the location in strides (dx, dy), the box's log width and height in strides
(w = exp(v) * s), a quality logit, and C class logits; a class's score is
sqrt(sigmoid(class) * sigmoid(quality)).

`ssd` (torchvision's SSD and SSDlite, `edgecnn/models/torchvision_detect.py`): one tensor
(N, A, 4 + 1 + C) over A default boxes listed in the spec (`anchors`, xyxy pixels): box codes
(dx, dy, dw, dh) scaled by `box_weights` as torchvision's BoxCoder, a background logit and C class
logits; scores are the softmax without the background. Decoding follows torchvision's
`SSD.postprocess_detections`: per class, scores above the threshold, the top `pre_nms_top_k`,
then class-aware NMS over all of them; the spec's thresholds are the defaults.

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
MAX_LOG_SIZE = 10.0  # exp() of larger raw values overflows float32 long before it means anything


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
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = (a[:, k : k + 1] for k in range(4))
    bx1, by1, bx2, by2 = (b[:, k] for k in range(4))
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first (at most `max_keep`)."""
    order = np.argsort(-scores, kind="stable")
    ious = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= ious[i] > iou_threshold
    return np.asarray(keep, np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other; kept indices, best first."""
    kept = [idx[nms(boxes[idx], scores[idx], iou_threshold, max_keep)] for idx in
            (np.nonzero(classes == c)[0] for c in np.unique(classes))]
    if not kept:
        return np.zeros(0, np.int64)
    kept_all = np.concatenate(kept)
    return kept_all[np.argsort(-scores[kept_all], kind="stable")][:max_keep]


def locations(strides: list[int], input_size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (L, 2) as (x, y) and the stride (L,) of every location of a `center_size` head, in output order."""
    h, w = input_size
    centers, stride_of = [], []
    for s in strides:
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
        centers.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
        stride_of.append(np.full(gh * gw, s, np.float32))
    return np.concatenate(centers), np.concatenate(stride_of)


def center_size_boxes(raw_box: np.ndarray, centers: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(..., L, 4) raw (dx, dy, log w, log h) to (..., L, 4) xyxy boxes."""
    raw_box = raw_box.astype(np.float32)
    c = centers + raw_box[..., :2] * strides[:, None]
    half = np.exp(np.clip(raw_box[..., 2:], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * strides[:, None] / 2
    return np.concatenate([c - half, c + half], -1)


def _check(raw: np.ndarray, head: dict) -> None:
    n_loc = sum(math.ceil(head["input_size"][0] / s) * math.ceil(head["input_size"][1] / s) for s in head["strides"])
    want = (n_loc, 5 + int(head["num_classes"]))
    if raw.ndim != 3 or tuple(raw.shape[1:]) != want:
        raise ValueError(f"a center_size head of {head} outputs (N, {want[0]}, {want[1]}), got {tuple(raw.shape)}")


def decode_center_size(
    raw: np.ndarray,
    head: dict,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
) -> list[Detections]:
    """Detections of every image of a `center_size` head's raw output (N, L, 5 + C)."""
    raw = np.asarray(raw, np.float32)
    _check(raw, head)
    h, w = head["input_size"]
    centers, strides = locations(head["strides"], head["input_size"])
    scores = np.sqrt(sigmoid(raw[..., 5:]) * sigmoid(raw[..., 4:5]))  # N, L, C
    out = []
    for i in range(len(raw)):
        loc, cls = np.nonzero(scores[i] > score_threshold)
        sc = scores[i][loc, cls]
        if len(sc) > pre_nms_top_k:
            top = np.argpartition(-sc, pre_nms_top_k - 1)[:pre_nms_top_k]
            loc, cls, sc = loc[top], cls[top], sc[top]
        boxes = center_size_boxes(raw[i, loc, :4], centers[loc], strides[loc])
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        keep = batched_nms(boxes, sc, cls, iou_threshold, max_detections)
        out.append(Detections(boxes[keep], sc[keep].astype(np.float32), cls[keep].astype(np.int64)))
    return out


def ssd_boxes(codes: np.ndarray, anchors: np.ndarray, weights: list[float], clip: float) -> np.ndarray:
    """torchvision BoxCoder.decode_single in numpy: (A, 4) codes against (A, 4) xyxy default boxes."""
    codes = codes.astype(np.float32)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    wx, wy, ww, wh = weights
    pcx, pcy = codes[:, 0] / wx * w + cx, codes[:, 1] / wy * h + cy
    pw = np.exp(np.minimum(codes[:, 2] / ww, clip)) * w
    ph = np.exp(np.minimum(codes[:, 3] / wh, clip)) * h
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


def decode_ssd(
    raw: np.ndarray,
    head: dict,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    pre_nms_top_k: int | None = None,
) -> list[Detections]:
    """Detections of every image of an `ssd` head's raw output (N, A, 4 + 1 + C), as torchvision decodes them."""
    raw = np.asarray(raw, np.float32)
    anchors = np.asarray(head["anchors"], np.float32)
    c = int(head["num_classes"])
    if raw.ndim != 3 or tuple(raw.shape[1:]) != (len(anchors), 5 + c):
        raise ValueError(f"an ssd head of {c} classes outputs (N, {len(anchors)}, {5 + c}), got {tuple(raw.shape)}")
    thr = head.get("score_threshold", SCORE_THRESHOLD) if score_threshold is None else score_threshold
    iou = head.get("iou_threshold", IOU_THRESHOLD) if iou_threshold is None else iou_threshold
    top_k = head.get("pre_nms_top_k", PRE_NMS_TOP_K) if pre_nms_top_k is None else pre_nms_top_k
    keep_n = head.get("max_detections", MAX_DETECTIONS) if max_detections is None else max_detections
    h, w = head["input_size"]
    logits = raw[..., 4:]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = []
    for i in range(len(raw)):
        boxes = np.clip(ssd_boxes(raw[i, :, :4], anchors, head["box_weights"], head["box_clip"]), 0, [w, h, w, h])
        sel_box, sel_score, sel_cls = [], [], []
        for k in range(c):
            score = probs[i, :, k + 1]
            idx = np.nonzero(score > thr)[0]
            idx = idx[np.argsort(-score[idx], kind="stable")[:top_k]]
            sel_box.append(boxes[idx])
            sel_score.append(score[idx])
            sel_cls.append(np.full(len(idx), k, np.int64))
        b, s, k_ = np.concatenate(sel_box), np.concatenate(sel_score), np.concatenate(sel_cls)
        keep = batched_nms(b, s, k_, iou, keep_n)
        out.append(Detections(b[keep].astype(np.float32), s[keep].astype(np.float32), k_[keep]))
    return out


DECODERS = {"center_size": decode_center_size, "ssd": decode_ssd}


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
    """The inverse of `to_arrays` (also of its JSON lists, where an empty `boxes` loses its shape)."""
    n, image = int(arrays["images"]), np.asarray(arrays["image"])
    arrays = {**arrays, "boxes": np.asarray(arrays["boxes"], np.float32).reshape(-1, 4)}
    return [
        Detections(arrays["boxes"][image == i], arrays["scores"][image == i], arrays["classes"][image == i])
        for i in range(n)
    ]
