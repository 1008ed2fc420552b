"""Small anchor-free detectors for edge targets: `det_small` and `det_tiny`.

One prediction per location of each level, as in FCOS (Tian et al. 2019) and YOLOX (Ge et al.
2021): a plain conv backbone (3x3 conv-BN-ReLU stages, each halving the resolution), a top-down
neck (1x1 laterals, nearest upsampling, sums) and, per level, a head tower ending in one 3x3
prediction conv with 4 + 1 + C channels: box centre offset and log size, quality, class logits. The
forward pass returns the raw head tensor (N, L, 5 + C), every level's locations one after the
other; no decoding or NMS inside the graph, so it exports to ONNX and TFLite as it is and
`edgecnn/tasks/detection/decode.py` decodes it the same way on the host and on a device.
`head_spec()` describes that tensor. `det_small` (about 0.5M parameters) is the teacher size,
`det_tiny` (about 0.1M) the student size; both use strides 8 and 16 by default, so a student
distils location by location from its teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIOR = 0.01  # initial class probability (focal loss's prior): training starts from "background"


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Head(nn.Module):
    """One level's tower of 3x3 convs and its prediction conv (box 4, quality 1, classes C)."""

    def __init__(self, width: int, convs: int, num_classes: int):
        super().__init__()
        self.tower = nn.Sequential(*[conv_bn(width, width) for _ in range(convs)])
        self.pred = nn.Conv2d(width, 5 + num_classes, 3, 1, 1)
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)
        nn.init.constant_(self.pred.bias[5:], -math.log((1 - PRIOR) / PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.tower(x))


class TinyDetector(nn.Module):
    """An anchor-free detector: backbone of stride-2 stages, top-down neck, a head per level."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 96,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        head_width: int = 64,
        head_convs: int = 2,
        strides: tuple[int, ...] = (8, 16),
    ):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        possible = [2 ** (i + 1) for i in range(len(widths))]
        if not strides or list(strides) != sorted(set(strides)) or any(s not in possible for s in strides):
            raise ValueError(f"strides {list(strides)} must rise and be among {possible} (one per stage of widths)")
        if image_size % strides[-1]:
            raise ValueError(f"image_size {image_size} must be a multiple of the largest stride {strides[-1]}")
        self.num_classes, self.image_size, self.strides = num_classes, image_size, strides
        stages, cin = [], in_channels
        for i, w in enumerate(widths[: possible.index(strides[-1]) + 1]):
            blocks = [conv_bn(cin, w, 2)] + ([conv_bn(w, w)] if i else [])
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.levels = [possible.index(s) for s in strides]
        self.laterals = nn.ModuleList([conv_bn(widths[i], head_width, k=1) for i in self.levels])
        self.heads = nn.ModuleList([Head(head_width, head_convs, num_classes) for _ in strides])

    def head_spec(self) -> dict:
        """What the output tensor holds (see edgecnn/tasks/detection/decode.py)."""
        return {
            "kind": "center_size",
            "strides": list(self.strides),
            "num_classes": self.num_classes,
            "input_size": [self.image_size, self.image_size],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pyramid = [lat(feats[i]) for lat, i in zip(self.laterals, self.levels, strict=True)]
        for j in range(len(pyramid) - 2, -1, -1):  # top-down: each level gets the coarser one upsampled
            factor = self.strides[j + 1] // self.strides[j]
            pyramid[j] = pyramid[j] + F.interpolate(pyramid[j + 1], scale_factor=factor, mode="nearest")
        outs = [head(p).flatten(2) for head, p in zip(self.heads, pyramid, strict=True)]
        return torch.cat(outs, 2).transpose(1, 2)


def _det_small(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return TinyDetector(num_classes, in_channels, image_size, **kw)


def _det_tiny(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    kw = {"widths": (8, 16, 32, 64), "head_width": 32, "head_convs": 1, **kw}
    return TinyDetector(num_classes, in_channels, image_size, **kw)


DETECTORS = {"det_small": _det_small, "det_tiny": _det_tiny}
