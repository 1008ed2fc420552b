"""Keypoint metrics by pycocotools: OKS-AP is 1 on perfect predictions and falls with the error, matches OKS
computed by hand at its thresholds, follows the sigmas; PCK counts keypoints within a share of the box."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecnn.tasks.keypoints.data import pack_targets
from edgecnn.tasks.keypoints.metrics import keypoint_metrics, oks_ap, pck

SIGMAS = [0.05, 0.05, 0.08, 0.08]


def _targets(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 20, (2, n))
    side = rng.uniform(20, 40, n)
    boxes = np.stack([x1, y1, x1 + side, y1 + side], 1)
    kp = np.stack([x1[:, None] + rng.uniform(0, 1, (n, 4)) * side[:, None],
                   y1[:, None] + rng.uniform(0, 1, (n, 4)) * side[:, None], np.full((n, 4), 2.0)], -1)
    return kp.astype(np.float32), boxes.astype(np.float32), (side * side).astype(np.float32)


def _predictions(kp: np.ndarray, offset: np.ndarray | float = 0.0, score: float = 0.9) -> np.ndarray:
    pred = kp.copy()
    pred[..., :2] = pred[..., :2] + offset
    pred[..., 2] = score
    return pred


def test_perfect_predictions_score_one_and_noise_lowers_every_metric():
    kp, boxes, areas = _targets(60)
    y = pack_targets(kp, boxes, areas)
    perfect = keypoint_metrics(_predictions(kp), y, SIGMAS)
    assert perfect == {"oks_ap": 1.0, "oks_ap50": 1.0, "oks_ap75": 1.0, "pck10": 1.0, "pck20": 1.0}
    rng = np.random.default_rng(1)
    last = perfect
    for noise in (1.0, 2.5, 6.0):
        m = keypoint_metrics(_predictions(kp, rng.normal(0, noise, kp[..., :2].shape)), y, SIGMAS)
        assert m["oks_ap"] < last["oks_ap"] and m["oks_ap75"] <= last["oks_ap75"] and m["pck10"] <= last["pck10"]
        assert 0 <= m["oks_ap"] <= m["oks_ap50"] <= 1
        last = m
    assert last["oks_ap"] < 0.3


def _shift_for_oks(oks: float, area: float, sigma: float) -> float:
    """The distance d at which exp(-d^2 / (2 area (2 sigma)^2)) equals `oks`."""
    return math.sqrt(-math.log(oks) * 2 * area * (2 * sigma) ** 2)


@pytest.mark.parametrize(("oks", "ap", "ap50", "ap75"), [(0.62, 0.3, 1.0, 0.0), (0.8, 0.7, 1.0, 1.0), (0.4, 0, 0, 0)])
def test_oks_ap_of_one_instance_counts_the_oks_thresholds_it_passes(oks, ap, ap50, ap75):
    """Every keypoint moved so its OKS term is `oks`: AP@[.5:.95] is the share of the 10 thresholds <= `oks`."""
    kp, boxes, areas = _targets(1)
    d = _shift_for_oks(oks, float(areas[0]), 0.05)
    pred = _predictions(kp, np.array([d, 0.0]))
    m = oks_ap(pred, pack_targets(kp, boxes, areas), [0.05] * 4)
    assert m == pytest.approx({"oks_ap": ap, "oks_ap50": ap50, "oks_ap75": ap75})


def test_larger_sigmas_forgive_more():
    kp, boxes, areas = _targets(40, seed=3)
    y = pack_targets(kp, boxes, areas)
    pred = _predictions(kp, np.random.default_rng(4).normal(0, 1.5, kp[..., :2].shape))
    tight, loose = oks_ap(pred, y, [0.025] * 4), oks_ap(pred, y, [0.1] * 4)
    assert tight["oks_ap"] < loose["oks_ap"]


def test_unlabelled_keypoints_are_not_scored():
    kp, boxes, areas = _targets(30, seed=5)
    pred = _predictions(kp)
    pred[:, 0, :2] += 30.0  # the first keypoint badly wrong ...
    kp_unlab = kp.copy()
    kp_unlab[:, 0] = 0.0  # ... but unlabelled
    m = keypoint_metrics(pred, pack_targets(kp_unlab, boxes, areas), SIGMAS)
    assert m["oks_ap"] == 1.0 and m["pck10"] == 1.0
    assert keypoint_metrics(pred, pack_targets(kp, boxes, areas), SIGMAS)["pck10"] == pytest.approx(0.75)


def test_confident_good_predictions_rank_first():
    """The image score (mean keypoint peak) orders detections: good ones confident beat good ones unsure."""
    kp, boxes, areas = _targets(40, seed=6)
    y = pack_targets(kp, boxes, areas)
    pred = _predictions(kp)
    pred[20:, :, :2] += 15.0  # half the images wrong
    pred[:20, :, 2], pred[20:, :, 2] = 0.9, 0.2
    ranked_right = oks_ap(pred, y, SIGMAS)["oks_ap"]
    pred[:20, :, 2], pred[20:, :, 2] = 0.2, 0.9
    assert oks_ap(pred, y, SIGMAS)["oks_ap"] < ranked_right


def test_pck_uses_the_boxes_longer_side():
    kp = np.array([[[10, 10, 2], [20, 20, 2]]], np.float32)
    y = pack_targets(kp, np.array([[0, 0, 50, 20]], np.float32), np.array([1000.0], np.float32))
    pred = _predictions(kp, np.array([[7.0, 0.0], [0.0, 3.0]]))  # 7 px and 3 px off; longer side 50
    assert pck(pred, y, 0.1) == 0.5 and pck(pred, y, 0.2) == 1.0
