"""Raw keypoint heatmaps to keypoints with sub-pixel precision, in numpy alone.

This file imports nothing but numpy (and the standard library) and runs on Python 3.9+, so it is
copied as it is beside the standalone device agent (`edgecnn/runtime/agent.py`): the host and the
device decode one way. A model's exported graph ends at its raw heatmaps; the *head spec*, a
JSON-able dict travelling with the model, says what they hold:

    {"kind": "heatmap", "num_keypoints": 4, "stride": 4, "input_size": [64, 64],
     "keypoints": ["top", "bottom", "left", "right"], "sigmas": [0.05, ...], "target_sigma": 1.5}

`heatmap` (edgecnn's zoo pose models, `edgecnn/models/zoo_pose.py`, and any model whose output is
one map per keypoint, as in SimpleBaseline, Xiao et al. 2018): one tensor (N, K, H/s, W/s). Cell
(i, j) of a map covers input pixels [j s, (j + 1) s) x [i s, (i + 1) s) and stands for its centre
((j + 0.5) s, (i + 0.5) s); training targets are Gaussians of `target_sigma` cells centred at the
keypoint's exact (not rounded) position, so decoding is unbiased.

Decoding: per map, the arg-max cell, refined per axis by the vertex of the parabola through the
logarithms of the peak and its two neighbours (exact for a Gaussian peak; the separable form of
DARK, Zhang et al. 2020), so |offset| <= 0.5 cell always; a map's score is its peak value. Points
are (x, y) in pixels of the model input (continuous coordinates: the image spans 0..W and 0..H).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-10  # heatmap values are floored here before the logarithm of the refinement


def _check(raw: np.ndarray, head: dict) -> None:
    k, s = int(head["num_keypoints"]), int(head["stride"])
    h, w = head["input_size"]
    want = (k, -(-h // s), -(-w // s))
    if raw.ndim != 4 or tuple(raw.shape[1:]) != want:
        raise ValueError(f"a heatmap head of {k} keypoints at stride {s} outputs (N, {want[0]}, {want[1]}, {want[2]}), "
                         f"got {tuple(raw.shape)}")


def _offset(lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through (-1, log lo), (0, log mid), (1, log hi), in -0.5..0.5 (0 where flat)."""
    a, b, c = (np.log(np.maximum(v, EPS)) for v in (lo, mid, hi))
    curve = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(curve < 0, 0.5 * (a - c) / np.where(curve < 0, curve, -1.0), 0.0)
    return np.clip(off, -0.5, 0.5)


def decode_heatmaps(raw: np.ndarray, head: dict) -> np.ndarray:
    """Keypoints (N, K, 3) as x, y (input pixels) and score (the peak value) of heatmaps (N, K, h, w)."""
    raw = np.asarray(raw, np.float32)
    _check(raw, head)
    n, k, h, w = raw.shape
    s = float(head["stride"])
    flat = raw.reshape(n, k, h * w)
    best = flat.argmax(-1)
    row, col = best // w, best % w
    peak = np.take_along_axis(flat, best[..., None], -1)[..., 0]

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.take_along_axis(flat, (r * w + c)[..., None], -1)[..., 0]

    left, right = at(row, np.maximum(col - 1, 0)), at(row, np.minimum(col + 1, w - 1))
    up, down = at(np.maximum(row - 1, 0), col), at(np.minimum(row + 1, h - 1), col)
    dx = np.where((col > 0) & (col < w - 1), _offset(left, peak, right), 0.0)
    dy = np.where((row > 0) & (row < h - 1), _offset(up, peak, down), 0.0)
    x = (col + dx + 0.5) * s
    y = (row + dy + 0.5) * s
    return np.stack([x, y, peak], -1).astype(np.float32)


DECODERS = {"heatmap": decode_heatmaps}


def decode(raw: np.ndarray, head: dict) -> np.ndarray:
    """Keypoints (N, K, 3) of a raw head output, by the head spec's kind (see DECODERS)."""
    kind = head.get("kind")
    if kind not in DECODERS:
        raise ValueError(f"unknown keypoint head kind {kind!r}; known: {', '.join(DECODERS)}")
    return DECODERS[kind](raw, head)


def to_arrays(keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """Decoded keypoints as arrays for an .npz (or the agent's JSON): `keypoints` (N, K, 3)."""
    return {"keypoints": np.asarray(keypoints, np.float32)}


def from_arrays(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The inverse of `to_arrays` (also of its JSON lists): keypoints (N, K, 3)."""
    kp = np.asarray(arrays["keypoints"], np.float32)
    return kp.reshape(len(kp), -1, 3) if kp.size else kp.reshape(len(kp), 0, 3)


def instance_scores(keypoints: np.ndarray) -> np.ndarray:
    """Each image's confidence (N,): the mean of its keypoints' scores, floored at 0 (ranks images for OKS-AP)."""
    return np.clip(np.asarray(keypoints, np.float32)[..., 2], 0, None).mean(-1)
