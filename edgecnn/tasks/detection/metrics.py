"""COCO detection metrics computed by pycocotools (the reference implementation), never a home-made AP.

`coco_map` takes decoded detections (one `Detections` per image) and the split's padded targets
(rows `class, x1, y1, x2, y2`, class -1 = padding) and returns COCO's box AP averaged over IoU
0.50:0.95 (`mAP`, the detection score), at IoU 0.50 (`mAP50`) and 0.75 (`mAP75`), with COCO's
defaults: up to 100 detections per image, 101-point interpolated precision, classes without
ground truth left out of the mean. Boxes are compared in the model's input frame (the letterboxed
image): IoU is unchanged by the letterbox's uniform scale and shift.
"""

from __future__ import annotations

import numpy as np
import torch

from edgecnn.core.console import quiet_libraries
from edgecnn.tasks.detection.decode import Detections

METRICS = ("mAP", "mAP50", "mAP75")


def _ground_truth(targets: np.ndarray, num_classes: int) -> dict:
    images, annotations = [], []
    for i, rows in enumerate(targets):
        images.append({"id": i + 1})
        for c, x1, y1, x2, y2 in rows[rows[:, 0] >= 0].tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": c + 1} for c in range(num_classes)]}


def coco_map(predictions: list[Detections], targets: np.ndarray | torch.Tensor, num_classes: int) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 of `predictions` against padded `targets` (N, M, 5)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    targets = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} images of detections for {len(targets)} images of targets")
    gt_dict = _ground_truth(targets, num_classes)
    if not gt_dict["annotations"]:
        return dict.fromkeys(METRICS, float("nan"))
    results = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
        for i, d in enumerate(predictions)
        for (x1, y1, x2, y2), s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.classes.tolist(), strict=True)
    ]
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with quiet_libraries():
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: max(0.0, float(v)) for name, v in zip(METRICS, ev.stats[:3], strict=True)}
