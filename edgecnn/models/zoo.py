"""Small CNNs suited to edge targets: LeNet-5 for 28x28 digits, CIFAR ResNets, MobileNetV2-32, the
detectors of zoo_detect.py and the heatmap pose models of zoo_pose.py."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.models.zoo_detect import DETECTORS
from edgecnn.models.zoo_pose import POSE_MODELS


class LeNet(nn.Module):
    """LeNet-5 style: conv-pool-conv-pool-fc-fc-fc, widths scalable for students."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        c1: int = 6,
        c2: int = 16,
        f1: int = 120,
        f2: int = 84,
        image_size: int = 28,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.bn2 = nn.BatchNorm2d(c2)
        side = (image_size // 2 - 4) // 2
        self.fc1 = nn.Linear(c2 * side * side, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc(F.relu(self.fc2(F.relu(self.fc1(x)))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet: depth 6n+2, three stages of widths w, 2w, 4w."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6n+2 and >= 8, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, cout in enumerate([width, 2 * width, 4 * width]):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 inputs: stride-1 stem and first stages, width multiplier."""

    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width_mult + 4) // 8 * 8)

        cin = ch(32)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        last = ch(1280) if width_mult > 1 else 1280
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _resnet(depth: int):
    def build(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> nn.Module:
        return CifarResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)

    return build


def _lenet(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    return LeNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


def _lenet_small(num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
    kw = {"c1": 4, "c2": 8, "f1": 64, "f2": 32, **kw}
    return LeNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


def _mbv2(num_classes: int, in_channels: int, image_size: int, width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2Cifar(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)


ZOO = {
    "lenet": _lenet,
    "lenet_small": _lenet_small,
    **{f"cifar_resnet{d}": _resnet(d) for d in (8, 14, 20, 26, 32, 44, 56)},
    "mobilenetv2_cifar": _mbv2,
    **DETECTORS,
    **POSE_MODELS,
}
