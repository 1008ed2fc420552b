"""COCO mAP through pycocotools on cases checkable by hand (101-point interpolated precision)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.tasks.detection.data import pad_targets
from edgecnn.tasks.detection.decode import Detections
from edgecnn.tasks.detection.metrics import coco_map

GT = [  # three images, two classes, boxes xyxy
    (np.array([[10, 10, 50, 50], [60, 20, 90, 80]], np.float32), np.array([0, 1])),
    (np.array([[0, 0, 40, 30]], np.float32), np.array([1])),
    (np.array([[20, 30, 70, 90], [5, 5, 25, 25]], np.float32), np.array([0, 0])),
]
TARGETS = pad_targets(GT)


def _dets(boxes_per_image, scores=None, classes=None) -> list[Detections]:
    out = []
    for i, boxes in enumerate(boxes_per_image):
        k = len(boxes)
        s = np.linspace(0.9, 0.5, k).astype(np.float32) if scores is None else np.asarray(scores[i], np.float32)
        c = GT[i][1][:k] if classes is None else np.asarray(classes[i])
        out.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4), s, c.astype(np.int64)))
    return out


def _shift_for_iou(box: np.ndarray, iou: float) -> np.ndarray:
    """The box moved right by the distance that leaves exactly `iou` overlap with itself."""
    w = box[2] - box[0]
    dx = w * (1 - iou) / (1 + iou)  # (w - dx) / (w + dx) = iou
    return box + np.array([dx, 0, dx, 0], np.float32)


def test_perfect_detections_score_one():
    m = coco_map(_dets([b for b, _ in GT]), TARGETS, num_classes=2)
    assert m == {"mAP": 1.0, "mAP50": 1.0, "mAP75": 1.0}


def test_boxes_at_iou_062_pass_three_of_ten_thresholds():
    """IoU 0.62 matches at 0.50, 0.55, 0.60 and fails from 0.65 on: mAP@[.5:.95] = 3/10."""
    shifted = [np.stack([_shift_for_iou(b, 0.62) for b in boxes]) for boxes, _ in GT]
    m = coco_map(_dets(shifted), TARGETS, num_classes=2)
    assert m["mAP50"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(0.3)
    assert m["mAP75"] == pytest.approx(0.0)


def test_missed_objects_cut_ap_at_their_recall():
    """Found without false positives: class 0 two of three objects (recall 2/3: 67 of COCO's 101 recall
    points keep precision 1), class 1 one of two (recall 1/2: 51 points)."""
    found = [GT[0][0][:1], GT[1][0], GT[2][0][:1]]
    m = coco_map(_dets(found), TARGETS, num_classes=2)
    assert m["mAP50"] == pytest.approx((67 / 101 + 51 / 101) / 2)


def test_a_false_positive_ranked_first_halves_precision_at_the_first_recall():
    """Class 1: a confident wrong box, then both objects: precision 1/2, 2/3 -> AP = 2/3 over recall 0..1."""
    dets = _dets(
        [np.stack([GT[0][0][0], GT[0][0][1]]), np.stack([[100, 100, 120, 120], GT[1][0][0]]), GT[2][0]],
        scores=[[0.9, 0.5], [0.95, 0.4], [0.8, 0.7]],
        classes=[[0, 1], [1, 1], [0, 0]],
    )
    m = coco_map(dets, TARGETS, num_classes=2)
    # class 0 perfect (AP 1); class 1 ranked FP, TP(0.5), TP(0.4): interpolated precision 2/3 at every recall
    assert m["mAP50"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-6)


def test_wrong_classes_and_no_detections_score_zero():
    wrong = _dets([b for b, _ in GT], classes=[1 - c for _, c in GT])
    assert coco_map(wrong, TARGETS, num_classes=2)["mAP"] == 0.0
    assert coco_map([Detections.empty()] * 3, TARGETS, num_classes=2) == {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}


def test_pycocotools_prints_nothing(capfd):
    coco_map(_dets([b for b, _ in GT]), TARGETS, num_classes=2)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_images_and_targets_must_correspond():
    with pytest.raises(ValueError, match="images"):
        coco_map(_dets([b for b, _ in GT])[:2], TARGETS, num_classes=2)
