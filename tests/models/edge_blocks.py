"""A user CNN mixing the layers pruning breaks most often: residual adds, concatenations,
grouped and depthwise convolutions, squeeze-and-excitation, and a channel shuffle."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Residual(nn.Module):
    """conv -> depthwise -> SE -> project, added to the input."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.expand = conv_bn(c, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, groups=hidden)
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.project(self.se(self.dw(self.expand(x)))))


class Inception(nn.Module):
    """Two branches concatenated; one of them a grouped convolution."""

    def __init__(self, cin: int, c1: int, c2: int):
        super().__init__()
        self.a = conv_bn(cin, c1, 1)
        self.b = nn.Sequential(conv_bn(cin, c2, 1), conv_bn(c2, c2, 3, groups=4))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class Shuffle(nn.Module):
    """A ShuffleNet-style unit: split, a branch, concatenation, channel shuffle."""

    def __init__(self, c: int):
        super().__init__()
        self.branch = nn.Sequential(conv_bn(c // 2, c // 2, 1), conv_bn(c // 2, c // 2, 3, groups=c // 2),
                                    conv_bn(c // 2, c // 2, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class EdgeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, shuffle: bool = True):
        super().__init__()
        self.stem = conv_bn(in_channels, width, 3, 2)
        self.res1 = Residual(width, 4 * width)
        self.mix = Inception(width, width, 2 * width)
        self.res2 = Residual(3 * width, 3 * width)
        self.shuffle = Shuffle(3 * width) if shuffle else nn.Identity()
        self.head = conv_bn(3 * width, 4 * width, 3, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.shuffle(self.res2(self.mix(self.res1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))
