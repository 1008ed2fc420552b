"""Training and distillation losses of `fcos` heads (edgecnn's zoo detectors).

Training (FCOS, Tian et al. 2019, with center sampling): a location is positive for a ground-truth
box when it lies inside the box and within 1.5 strides of its centre, and the box's largest
location-to-side distance falls in the location's level range (a level of stride s takes
(4 s_prev, 4 s], the last level everything above); among several boxes the smallest wins. Loss:
sigmoid focal loss on the classes over every location, GIoU loss on the boxes of positives
weighted by their centerness target, and BCE on centerness, each normalised by the positives.
Focal and GIoU losses are torchvision.ops'.

Distillation (toward a teacher with the same head layout): the student's class logits follow the
teacher's soft scores (sigmoid at temperature T, a quality-focal BCE, scaled by T^2), its boxes
follow the teacher's decoded boxes (GIoU) and its centerness the teacher's, every location
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
from edgecnn.tasks.detection.decode import MAX_LOG_DISTANCE, fcos_locations

CENTER_RADIUS = 1.5  # strides


@functools.lru_cache(maxsize=16)
def _geometry(strides: tuple[int, ...], input_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    centers, stride_of = fcos_locations(list(strides), list(input_size))
    bounds = [0.0] + [4.0 * s for s in strides[:-1]] + [float("inf")]
    lo = np.zeros_like(stride_of)
    hi = np.zeros_like(stride_of)
    for i, s in enumerate(strides):
        lo[stride_of == s], hi[stride_of == s] = bounds[i], bounds[i + 1]
    return tuple(torch.from_numpy(a) for a in (centers, stride_of, lo, hi))


def geometry(head: dict, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Centres (L, 2), strides (L,) and level ranges lo, hi (L,) of an fcos head's locations."""
    return tuple(t.to(device) for t in _geometry(tuple(head["strides"]), tuple(head["input_size"])))


def raw_to_boxes(raw_box: torch.Tensor, centers: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Differentiable twin of decode.fcos_boxes: (..., L, 4) log-distances to xyxy boxes."""
    d = torch.exp(raw_box.clamp(-MAX_LOG_DISTANCE, MAX_LOG_DISTANCE)) * strides[..., None]
    return torch.cat([centers - d[..., :2], centers + d[..., 2:]], -1)


@torch.no_grad()
def assign(targets: torch.Tensor, head: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per location: the class of its box (-1: background) (B, L), the box (B, L, 4), the centerness target (B, L)."""
    centers, strides, lo, hi = geometry(head, targets.device)
    cls, boxes = targets[..., 0], targets[..., 1:]  # B, M / B, M, 4
    cx, cy = centers[None, :, None, 0], centers[None, :, None, 1]  # 1, L, 1
    x1, y1, x2, y2 = (boxes[:, None, :, k] for k in range(4))  # B, 1, M
    ltrb = torch.stack([cx - x1, cy - y1, x2 - cx, y2 - cy], -1)  # B, L, M, 4
    radius = CENTER_RADIUS * strides[None, :, None]
    near = ((cx - (x1 + x2) / 2).abs() < radius) & ((cy - (y1 + y2) / 2).abs() < radius)
    reach = ltrb.max(-1).values
    ok = (cls[:, None, :] >= 0) & (ltrb.min(-1).values > 0) & near
    ok &= (reach > lo[None, :, None]) & (reach <= hi[None, :, None])
    area = ((x2 - x1) * (y2 - y1)).expand_as(ok).masked_fill(~ok, float("inf"))
    best = area.argmin(-1)  # B, L
    pos = ok.any(-1)
    b_idx = torch.arange(len(targets), device=targets.device)[:, None]
    cls_t = torch.where(pos, cls[b_idx, best].long(), torch.full_like(best, -1))
    box_t = boxes[b_idx, best]
    d = ltrb[b_idx, torch.arange(ltrb.shape[1], device=targets.device)[None, :], best].clamp(min=1e-6)
    ctr_t = ((d[..., [0, 2]].min(-1).values / d[..., [0, 2]].max(-1).values)
             * (d[..., [1, 3]].min(-1).values / d[..., [1, 3]].max(-1).values)).sqrt()
    return cls_t, box_t, torch.where(pos, ctr_t, torch.zeros_like(ctr_t))


def _check(out: torch.Tensor, head: dict) -> None:
    if head.get("kind") != "fcos":
        raise UserError(f"detection losses need an fcos head (edgecnn's zoo detectors); this model's head is {head}")
    if out.dim() != 3 or out.shape[-1] != 5 + head["num_classes"]:
        raise UserError(f"the model's output {tuple(out.shape)} is not an fcos head of {head['num_classes']} classes")


def fcos_loss(out: torch.Tensor, targets: torch.Tensor, head: dict) -> torch.Tensor:
    """The FCOS training loss of raw head outputs (B, L, 5 + C) against padded targets (B, M, 5)."""
    _check(out, head)
    out = out.float()
    centers, strides, _, _ = geometry(head, out.device)
    cls_t, box_t, ctr_t = assign(targets.to(out.device).float(), head)
    pos = cls_t >= 0
    n_pos = pos.sum().clamp(min=1).float()
    onehot = torch.zeros_like(out[..., 5:])
    onehot[pos, cls_t[pos]] = 1.0
    loss = sigmoid_focal_loss(out[..., 5:], onehot, reduction="sum") / n_pos
    if pos.any():
        loc = pos.nonzero()[:, 1]
        pred = raw_to_boxes(out[..., :4][pos], centers[loc], strides[loc])
        w = ctr_t[pos]
        loss = loss + (generalized_box_iou_loss(pred, box_t[pos]) * w).sum() / w.sum().clamp(min=1e-6)
        loss = loss + F.binary_cross_entropy_with_logits(out[..., 4][pos], ctr_t[pos], reduction="sum") / n_pos
    return loss


def fcos_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, head: dict, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * (soft classes + boxes + centerness toward the teacher) + (1 - alpha) * the label loss."""
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
    boxes_s = raw_to_boxes(s[..., :4], centers, strides)
    boxes_t = raw_to_boxes(t[..., :4], centers, strides)
    giou = generalized_box_iou_loss(boxes_s.reshape(-1, 4), boxes_t.reshape(-1, 4))
    kd = kd + (giou * weight.reshape(-1)).sum() / norm
    ctr = F.binary_cross_entropy_with_logits(s[..., 4], torch.sigmoid(t[..., 4]), reduction="none")
    kd = kd + (ctr * weight).sum() / norm
    return alpha * kd + (1 - alpha) * fcos_loss(student, targets, head)
