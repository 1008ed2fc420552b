"""Keypoint metrics: OKS-based AP by pycocotools (the reference implementation) and PCK.

`keypoint_metrics` takes decoded keypoints (N, K, 3: x, y, score), one instance per image, and the
split's targets (N, K + 2, 3; see tasks/keypoints/data.py) and returns:

- `oks_ap`, `oks_ap50`, `oks_ap75`: COCO's keypoint AP (COCOeval, iouType 'keypoints') averaged
  over OKS 0.50:0.95, at 0.50 and at 0.75; OKS uses the instance's area and the per-keypoint
  `sigmas` of the head spec (set on params.kpt_oks_sigmas), over labelled keypoints (v > 0).
  An image's detection score is the mean of its keypoints' peak values: AP ranks images by it.
  `oks_ap` is the task's score.
- `pck10`, `pck20`: PCK@0.1 and PCK@0.2, the share of labelled keypoints predicted within 0.1
  (0.2) of the instance box's longer side.

Points are compared in the model's input frame (the crop or canvas): OKS and PCK are unchanged by
a uniform scale when the area and box scale with it, as the data readers do.
"""

from __future__ import annotations

import numpy as np
import torch

from edgecnn.core.console import quiet_libraries
from edgecnn.tasks.keypoints.data import unpack_targets
from edgecnn.tasks.keypoints.decode import instance_scores

METRICS = ("oks_ap", "oks_ap50", "oks_ap75", "pck10", "pck20")


def pck(predictions: np.ndarray, targets: np.ndarray | torch.Tensor, fraction: float) -> float:
    """Share of labelled keypoints within `fraction` of their box's longer side of the prediction."""
    kp, boxes, _ = unpack_targets(targets)
    size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    dist = np.linalg.norm(np.asarray(predictions)[..., :2] - kp[..., :2], axis=-1)
    labelled = kp[..., 2] > 0
    if not labelled.any():
        return float("nan")
    return float((dist <= fraction * size[:, None])[labelled].mean())


def oks_ap(predictions: np.ndarray, targets: np.ndarray | torch.Tensor, sigmas: list[float]) -> dict[str, float]:
    """COCO keypoint AP at OKS 0.50:0.95, 0.50 and 0.75 of one instance per image (pycocotools)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    kp, boxes, areas = unpack_targets(targets)
    predictions = np.asarray(predictions, np.float32)
    if len(predictions) != len(kp):
        raise ValueError(f"{len(predictions)} images of keypoints for {len(kp)} images of targets")
    if len(sigmas) != kp.shape[1]:
        raise ValueError(f"{len(sigmas)} sigmas for {kp.shape[1]} keypoints")
    names = ("oks_ap", "oks_ap50", "oks_ap75")
    if not (kp[..., 2] > 0).any():
        return dict.fromkeys(names, float("nan"))
    images, annotations, results = [], [], []
    scores = instance_scores(predictions)
    for i in range(len(kp)):
        x1, y1, x2, y2 = boxes[i].tolist()
        images.append({"id": i + 1})
        annotations.append({
            "id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": max(float(areas[i]), 1.0),
            "keypoints": kp[i].reshape(-1).tolist(), "num_keypoints": int((kp[i, :, 2] > 0).sum()),
        })
        pts = np.concatenate([predictions[i, :, :2], np.ones((len(sigmas), 1), np.float32)], 1)
        results.append({"image_id": i + 1, "category_id": 1, "keypoints": pts.reshape(-1).tolist(),
                         "score": float(scores[i])})
    with quiet_libraries():
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "instance"}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: max(0.0, float(v)) for name, v in zip(names, ev.stats[:3], strict=True)}


def keypoint_metrics(predictions: np.ndarray, targets: np.ndarray | torch.Tensor, sigmas: list[float]) -> dict:
    """Every keypoint metric of a split (see the module docstring)."""
    return {**oks_ap(predictions, targets, sigmas), "pck10": pck(predictions, targets, 0.1),
            "pck20": pck(predictions, targets, 0.2)}
