"""Training and distillation losses of `center_size` heads (edgecnn's zoo detectors).

Assignment (center sampling, as in FCOS and YOLOX): a location is positive for a ground-truth box
when it lies within 1.5 strides of the box's centre (so the nearest location always does, however
thin the box) on the box's level: a level of stride s takes boxes whose longer side is in
(8 s_prev, 8 s], the last level everything larger; among several boxes the smallest wins.
Loss: sigmoid focal loss on the classes over every location, GIoU loss on the positives' boxes,
and BCE of the quality logit toward the IoU of the predicted box with its ground truth
(IoU-aware scores rank well-placed boxes first for NMS). Focal and GIoU losses are
torchvision.ops'; each term is normalised by the number of positives.

Distillation (toward a teacher with the same head layout): the student's class logits follow the
teacher's soft scores (sigmoid at temperature T, a quality-focal BCE, scaled by T^2), its boxes
follow the teacher's decoded boxes (GIoU) and its quality logit the teacher's, every location
weighted by the teacher's confidence there; mixed with the label loss as
alpha * distillation + (1 - alpha) * labels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from edgecnn.core.errors import UserError
from edgecnn.tasks.detection.decode import MAX_LOG_SIZE, locations

CENTER_RADIUS = 1.5  # strides
LEVEL_SIDE = 8  # a level of stride s takes boxes whose longer side is at most 8 s (the last: any)


@functools.lru_cache(maxsize=16)
def _geometry(strides: tuple[int, ...], input_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    centers, stride_of = locations(list(strides), list(input_size))
    bounds = [0.0] + [LEVEL_SIDE * float(s) for s in strides[:-1]] + [float("inf")]
    lo, hi = np.zeros_like(stride_of), np.zeros_like(stride_of)
    for i, s in enumerate(strides):
        lo[stride_of == s], hi[stride_of == s] = bounds[i], bounds[i + 1]
    return tuple(torch.from_numpy(a) for a in (centers, stride_of, lo, hi))


def geometry(head: dict, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Centres (L, 2), strides (L,) and level ranges lo, hi (L,) of a center_size head's locations."""
    return tuple(t.to(device) for t in _geometry(tuple(head["strides"]), tuple(head["input_size"])))


def raw_to_boxes(raw_box: torch.Tensor, centers: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Differentiable twin of decode.center_size_boxes: (..., L, 4) raw to xyxy boxes."""
    c = centers + raw_box[..., :2] * strides[..., None]
    half = torch.exp(raw_box[..., 2:].clamp(-MAX_LOG_SIZE, MAX_LOG_SIZE)) * strides[..., None] / 2
    return torch.cat([c - half, c + half], -1)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each box in `a` (n, 4) with the box at the same index in `b` (n, 4)."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return (inter / union.clamp(min=1e-9)).clamp(0, 1)


@torch.no_grad()
def assign(targets: torch.Tensor, head: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per location: the class of its box, -1 for background (B, L), and the box (B, L, 4)."""
    centers, strides, lo, hi = geometry(head, targets.device)
    cls, boxes = targets[..., 0], targets[..., 1:]  # B, M / B, M, 4
    x1, y1, x2, y2 = (boxes[:, None, :, k] for k in range(4))  # B, 1, M
    radius = CENTER_RADIUS * strides[None, :, None]
    near = ((centers[None, :, None, 0] - (x1 + x2) / 2).abs() < radius)
    near &= (centers[None, :, None, 1] - (y1 + y2) / 2).abs() < radius
    side = torch.maximum(x2 - x1, y2 - y1)
    ok = (cls[:, None, :] >= 0) & near & (side > lo[None, :, None]) & (side <= hi[None, :, None])
    area = ((x2 - x1) * (y2 - y1)).expand_as(ok).masked_fill(~ok, float("inf"))
    best = area.argmin(-1)  # B, L
    b_idx = torch.arange(len(targets), device=targets.device)[:, None]
    cls_t = torch.where(ok.any(-1), cls[b_idx, best].long(), torch.full_like(best, -1))
    return cls_t, boxes[b_idx, best]


def _check(out: torch.Tensor, head: dict) -> None:
    if head.get("kind") != "center_size":
        raise UserError(f"detection training needs a center_size head (edgecnn's zoo detectors); this one is {head}")
    if out.dim() != 3 or out.shape[-1] != 5 + head["num_classes"]:
        raise UserError(f"the model's output {tuple(out.shape)} is not a head of {head['num_classes']} classes")


def detection_loss(out: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
    """The training loss of raw head outputs (B, L, 5 + C) against padded targets (B, M, 5)."""
    _check(out, head)
    out = out.float()
    centers, strides, _, _ = geometry(head, out.device)
    cls_t, box_t = assign(targets.to(out.device).float(), head)
    pos = cls_t >= 0
    n_pos = pos.sum().clamp(min=1).float()
    onehot = torch.zeros_like(out[..., 5:])
    onehot[pos, cls_t[pos]] = 1.0
    loss = sigmoid_focal_loss(out[..., 5:], onehot, reduction="sum") / n_pos
    if pos.any():
        loc = pos.nonzero()[:, 1]
        pred = raw_to_boxes(out[..., :4][pos], centers[loc], strides[loc])
        loss = loss + generalized_box_iou_loss(pred, box_t[pos], reduction="sum") / n_pos
        iou = paired_iou(pred.detach(), box_t[pos])
        loss = loss + F.binary_cross_entropy_with_logits(out[..., 4][pos], iou, reduction="sum") / n_pos
    return loss


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * (soft classes + boxes + quality toward the teacher) + (1 - alpha) * the label loss."""
    _check(student, head)
    if teacher.shape != student.shape:
        raise UserError(
            f"distillation needs teacher and student heads of one layout; teacher outputs {tuple(teacher.shape)}, "
            f"student {tuple(student.shape)} (use the same strides, classes and image size)"
        )
    s, t = student.float(), teacher.float().detach()
    centers, strides, _, _ = geometry(head, s.device)
    temp = temperature
    p_t, p_s = torch.sigmoid(t[..., 5:] / temp), torch.sigmoid(s[..., 5:] / temp)
    weight = (torch.sigmoid(t[..., 5:]).max(-1).values * torch.sigmoid(t[..., 4])).sqrt()  # B, L: teacher's score
    norm = weight.sum().clamp(min=1.0)
    soft = F.binary_cross_entropy_with_logits(s[..., 5:] / temp, p_t, reduction="none") * (p_t - p_s).abs().pow(2)
    kd = soft.sum() * temp * temp / norm
    boxes_s = raw_to_boxes(s[..., :4], centers, strides).reshape(-1, 4)
    boxes_t = raw_to_boxes(t[..., :4], centers, strides).reshape(-1, 4)
    kd = kd + (generalized_box_iou_loss(boxes_s, boxes_t) * weight.reshape(-1)).sum() / norm
    quality = F.binary_cross_entropy_with_logits(s[..., 4], torch.sigmoid(t[..., 4]), reduction="none")
    kd = kd + (quality * weight).sum() / norm
    return alpha * kd + (1 - alpha) * detection_loss(student, targets, head)
