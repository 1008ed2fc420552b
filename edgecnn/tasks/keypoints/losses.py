"""Training and distillation losses of heatmap heads.

Labels: each labelled keypoint (v > 0) becomes a Gaussian of the head's `target_sigma` cells
centred at its exact position on its map (cell (i, j) stands for input pixel
((j + 0.5) s, (i + 0.5) s)), peak 1; the loss is the mean squared error between the raw heatmaps and
those targets, averaged over cells and over the labelled keypoints only (an unlabelled keypoint's
map is not trained), as in SimpleBaseline (Xiao et al. 2018).

Distillation: the student's heatmaps follow the teacher's (squared error over every map and cell:
the teacher also speaks for unlabelled keypoints), mixed with the label loss as
alpha * distillation + (1 - alpha) * labels. Most cells of a heatmap are background, so a plain
mean may drown the peaks that decoding reads: with `peak_weight` > 0 each cell weighs
1 + peak_weight x the teacher's value there (clipped to [0, 1]), a weighted mean. The default is
0 (plain MSE, as in Fast Pose Distillation, Zhang et al. 2019): benchmarks/keypoints.json compares
the two on the quickstart at 3 seeds, where plain MSE scored higher on validation, within seed
noise. Heatmaps are regression targets, not distributions, so the temperature plays no part.
"""

from __future__ import annotations

import torch

from edgecnn.core.errors import UserError

DEFAULT_TARGET_SIGMA = 1.5  # cells, for heads that do not say


def _check(out: torch.Tensor, head: dict) -> None:
    if head.get("kind") != "heatmap":
        raise UserError(f"keypoint training needs a heatmap head; this one is {head}")
    k, s = int(head["num_keypoints"]), int(head["stride"])
    h, w = head["input_size"]
    want = (k, -(-h // s), -(-w // s))
    if out.dim() != 4 or tuple(out.shape[1:]) != want:
        raise UserError(f"the model's output {tuple(out.shape)} is not (N, {want[0]}, {want[1]}, {want[2]}): "
                        f"{k} heatmaps at stride {s}")


@torch.no_grad()
def heatmap_targets(targets: torch.Tensor, head: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian target maps (B, K, h, w) of targets (B, K + 2, 3) and each keypoint's weight (B, K): 1 if labelled."""
    k, s = int(head["num_keypoints"]), float(head["stride"])
    h, w = (-(-int(v) // int(s)) for v in head["input_size"])
    sigma = float(head.get("target_sigma", DEFAULT_TARGET_SIGMA))
    kp = targets[:, :k].float()
    u, v = kp[..., 0] / s - 0.5, kp[..., 1] / s - 0.5  # the keypoint in cell coordinates
    xs = torch.arange(w, dtype=torch.float32, device=targets.device)
    ys = torch.arange(h, dtype=torch.float32, device=targets.device)
    gx = torch.exp(-((xs[None, None, :] - u[..., None]) ** 2) / (2 * sigma**2))  # B, K, w
    gy = torch.exp(-((ys[None, None, :] - v[..., None]) ** 2) / (2 * sigma**2))  # B, K, h
    weight = (kp[..., 2] > 0).float()
    return gy[..., :, None] * gx[..., None, :] * weight[..., None, None], weight


def heatmap_loss(out: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
    """Mean squared error of raw heatmaps (B, K, h, w) against Gaussian targets, labelled keypoints only."""
    _check(out, head)
    maps, weight = heatmap_targets(targets.to(out.device), head)
    per_map = ((out.float() - maps) ** 2).mean((2, 3))
    return (per_map * weight).sum() / weight.sum().clamp(min=1.0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict,
                      alpha: float, peak_weight: float = 0.0) -> torch.Tensor:
    """alpha * peak-weighted MSE(student heatmaps, teacher heatmaps) + (1 - alpha) * the label loss."""
    _check(student, head)
    if teacher.shape != student.shape:
        raise UserError(
            f"distillation needs teacher and student heatmaps of one shape; teacher outputs {tuple(teacher.shape)}, "
            f"student {tuple(student.shape)} (use the same keypoints, stride and image size)"
        )
    t = teacher.float().detach()
    weight = 1 + peak_weight * t.clamp(0, 1)
    kd = (weight * (student.float() - t) ** 2).sum() / weight.sum()
    return alpha * kd + (1 - alpha) * heatmap_loss(student, targets, head)
