"""Small heatmap pose models for edge targets: `pose_small` (teacher) and `pose_mobile` (student).

One heatmap per keypoint at stride 4, as in SimpleBaseline (Xiao et al. 2018) and the heatmap
part of PoseNet / MoveNet: a backbone of stride-2 stages down to stride 16, then a light
upsampling head (nearest x2 and a conv, twice, each summed with a 1x1 lateral of the backbone
stage at that stride, as a U-Net / FPN top-down path) and one 1x1 prediction conv with K output
channels. The forward pass returns the raw heatmaps (N, K, H/4, W/4): no arg-max inside the
graph, so it exports to ONNX and TFLite as it is and `edgecnn/tasks/keypoints/decode.py` decodes
it one way on the host and on a device. `head_spec()` describes that tensor.

`pose_small` (about 0.56M parameters) uses plain 3x3 conv-BN-ReLU blocks; `pose_mobile` (about
0.04M) is MobileNet-style: depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, ReLU6, as in
MobileNetV1, Howard et al. 2017) in the backbone and the head. Both end at the same stride, so a
student distils cell by cell from its teacher's heatmaps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIDE = 4
TARGET_SIGMA = 1.5  # the Gaussian training targets' sigma, in heatmap cells


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """MobileNetV1's block: 3x3 depthwise conv-BN-ReLU6, then 1x1 pointwise conv-BN-ReLU6."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
    )


class HeatmapPose(nn.Module):
    """Backbone to stride 16, an upsampling head with laterals to stride 4, a 1x1 heatmap conv per keypoint."""

    def __init__(
        self,
        num_keypoints: int = 4,
        in_channels: int = 1,
        image_size: int = 64,
        widths: tuple[int, ...] = (32, 64, 96, 128),
        head_width: int = 64,
        mobile: bool = False,
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths {list(widths)} must list 4 stage widths (strides 2, 4, 8, 16)")
        if image_size % 16:
            raise ValueError(f"image_size {image_size} must be a multiple of 16 (the backbone's stride)")
        self.num_keypoints, self.image_size, self.stride = num_keypoints, image_size, STRIDE
        block = separable if mobile else conv_bn
        stages, cin = [], in_channels
        for i, w in enumerate(widths):
            first = conv_bn(cin, w, 2) if i == 0 else block(cin, w, 2)  # the stem is a full conv in both
            stages.append(nn.Sequential(first, block(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.top = conv_bn(widths[3], head_width, k=1)
        self.laterals = nn.ModuleList([conv_bn(widths[i], head_width, k=1) for i in (2, 1)])  # strides 8, 4
        self.ups = nn.ModuleList([block(head_width, head_width) for _ in range(2)])
        self.pred = nn.Conv2d(head_width, num_keypoints, 1)
        nn.init.normal_(self.pred.weight, std=0.001)
        nn.init.zeros_(self.pred.bias)

    def head_spec(self) -> dict:
        """What the output tensor holds (see edgecnn/tasks/keypoints/decode.py)."""
        return {
            "kind": "heatmap",
            "num_keypoints": self.num_keypoints,
            "stride": self.stride,
            "input_size": [self.image_size, self.image_size],
            "target_sigma": TARGET_SIGMA,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.top(feats[3])
        for up, lateral, f in zip(self.ups, self.laterals, (feats[2], feats[1]), strict=True):
            y = up(F.interpolate(y, scale_factor=2, mode="nearest") + lateral(f))
        return self.pred(y)


def _pose_small(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return HeatmapPose(num_classes, in_channels, image_size, **kw)


def _pose_mobile(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    kw = {"widths": (16, 32, 48, 96), "head_width": 48, "mobile": True, **kw}
    return HeatmapPose(num_classes, in_channels, image_size, **kw)


POSE_MODELS = {"pose_small": _pose_small, "pose_mobile": _pose_mobile}
