"""Heatmap decoding: sub-pixel accuracy on synthetic Gaussian peaks, the conventions shared with the training
targets, and that decode.py is numpy-only (the device agent runs it)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.tasks.keypoints import decode as kpd
from edgecnn.tasks.keypoints.data import pack_targets
from edgecnn.tasks.keypoints.losses import heatmap_targets

HEAD = {"kind": "heatmap", "num_keypoints": 5, "stride": 4, "input_size": [64, 64], "target_sigma": 1.5}


def gaussian_maps(points: np.ndarray, stride: int, cells: int, sigma: float) -> np.ndarray:
    """Maps (N, K, cells, cells) with a Gaussian peak of 1 at each (x, y) input-pixel point (N, K, 2)."""
    u, v = points[..., 0] / stride - 0.5, points[..., 1] / stride - 0.5
    grid = np.arange(cells, dtype=np.float64)
    gx = np.exp(-((grid - u[..., None]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((grid - v[..., None]) ** 2) / (2 * sigma**2))
    return (gy[..., :, None] * gx[..., None, :]).astype(np.float32)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.5])
def test_gaussian_peaks_decode_to_their_sub_pixel_centre(sigma):
    rng = np.random.default_rng(0)
    pts = rng.uniform(6, 58, (40, 5, 2))  # away from the border, in input pixels
    maps = gaussian_maps(pts, 4, 16, sigma) * rng.uniform(0.3, 1.0, (40, 5, 1, 1)).astype(np.float32)
    out = kpd.decode(maps, HEAD)
    assert out.shape == (40, 5, 3) and out.dtype == np.float32
    err = np.linalg.norm(out[..., :2] - pts, axis=-1)
    assert err.max() < 0.01, err.max()  # the log-parabola is exact for a Gaussian (float32 rounding aside)
    np.testing.assert_allclose(out[..., 2], maps.reshape(40, 5, -1).max(-1))
    # the plain arg-max cell is off by up to half a cell (2 px): the refinement is what makes it sub-pixel
    cell = maps.reshape(40, 5, -1).argmax(-1)
    coarse = np.stack([(cell % 16 + 0.5) * 4, (cell // 16 + 0.5) * 4], -1)
    assert np.linalg.norm(coarse - pts, axis=-1).mean() > 50 * err.mean()


def test_noisy_peaks_stay_sub_pixel_and_offsets_are_bounded():
    rng = np.random.default_rng(1)
    pts = rng.uniform(6, 58, (200, 5, 2))
    maps = gaussian_maps(pts, 4, 16, 1.5) + rng.normal(0, 0.02, (200, 5, 16, 16)).astype(np.float32)
    out = kpd.decode(maps, HEAD)
    err = np.linalg.norm(out[..., :2] - pts, axis=-1)
    assert err.mean() < 0.35 and np.median(err) < 0.3, (err.mean(), np.median(err))
    cell = maps.reshape(200, 5, -1).argmax(-1)
    coarse = np.stack([(cell % 16 + 0.5) * 4, (cell // 16 + 0.5) * 4], -1)
    assert (np.abs(out[..., :2] - coarse) <= 2.0 + 1e-5).all()  # never more than half a cell from the peak cell


def test_border_flat_and_negative_maps_decode_without_nan():
    maps = np.zeros((3, 5, 16, 16), np.float32)
    maps[0, :, 0, 0] = 1.0  # a corner peak: no neighbour on one side, offset 0 there
    maps[1] -= 1.0  # all negative and flat: the first cell
    maps[2, :, 7, 9] = 1.0
    maps[2, :, 7, 10] = 1.0  # a two-cell plateau: halfway toward the tie
    out = kpd.decode(maps, HEAD)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, :2], 2.0)
    np.testing.assert_allclose(out[1, :, :2], 2.0)
    np.testing.assert_allclose(out[2, :, 0], (9 + 0.5 + 0.5) * 4)
    np.testing.assert_allclose(out[2, :, 1], (7 + 0.5) * 4)


def test_training_targets_decode_back_to_the_keypoints():
    """losses.heatmap_targets and decode share one cell convention: the Gaussian target of a point decodes to it."""
    rng = np.random.default_rng(2)
    kp = np.concatenate([rng.uniform(5, 59, (8, 5, 2)), np.full((8, 5, 1), 2.0)], -1).astype(np.float32)
    y = pack_targets(kp, np.tile([[0, 0, 64, 64]], (8, 1)), np.full(8, 4096.0))
    maps, weight = heatmap_targets(y, HEAD)
    assert maps.shape == (8, 5, 16, 16) and torch.equal(weight, torch.ones(8, 5))
    out = kpd.decode(maps.numpy(), HEAD)
    np.testing.assert_allclose(out[..., :2], kp[..., :2], atol=0.01)


def test_a_wrong_shape_or_kind_is_refused():
    with pytest.raises(ValueError, match=r"outputs \(N, 5, 16, 16\)"):
        kpd.decode(np.zeros((2, 5, 8, 8), np.float32), HEAD)
    with pytest.raises(ValueError, match="unknown keypoint head kind"):
        kpd.decode(np.zeros((2, 5, 16, 16), np.float32), {**HEAD, "kind": "regression"})


def test_decode_module_imports_numpy_only():
    tree = ast.parse(Path(kpd.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"numpy", "__future__", "math"}, names
