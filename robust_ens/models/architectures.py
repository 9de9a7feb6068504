"""Architectures registered in the model registry: CIFAR ResNet-20 and a small CNN.

Both are plain ``nn.Module`` s that take *normalized* inputs; :func:`robust_ens.models.create`
wraps them in :class:`~robust_ens.models.wrapper.Normalized` so users always pass [0, 1] images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.models.registry import register_model


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection shortcut when shapes change."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, Sec. 4.2): 3 stages of widths 16/32/64.

    Depth ``6n + 2``: ResNet-20 has ``n = 3`` blocks per stage. As in DVERGE's and TRS's code
    the shortcut is a 1x1 convolution + BatchNorm (option B) rather than the paper's zero-padding
    (option A); the layer names are ``conv1, bn1, layer1..3, linear`` so layer selection by module
    name (``layer2.1``) works.

    Args:
        depth: 20, 32, 44, 56, ... (``(depth - 2) % 6 == 0``).
        num_classes: Output classes.
        in_chans: Input channels.
        leaky_relu: Negative slope of a LeakyReLU instead of ReLU (GAL uses 0.1); 0 keeps ReLU.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, leaky_relu: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes

        def act() -> nn.Module:
            return nn.LeakyReLU(leaky_relu) if leaky_relu else nn.ReLU()

        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = act()
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, act=act))  # type: ignore[arg-type]
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class SmallCNN(nn.Module):
    """A small CNN for tiny images (digits 8x8, MNIST-like, CIFAR): any size >= 4 and channel count.

    Two 3x3 conv blocks (conv-BN-ReLU, width ``width`` and ``2*width``) with one 2x2 max-pool,
    global average pooling and a linear head.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@register_model("resnet20", family="cifar_resnet")
def resnet20(num_classes: int = 10, in_chans: int = 3, leaky_relu: float = 0.0) -> nn.Module:
    """CIFAR ResNet-20 (0.27 M parameters), the member architecture of DVERGE/TRS/GAL/ADP."""
    return CifarResNet(20, num_classes=num_classes, in_chans=in_chans, leaky_relu=leaky_relu)


@register_model("resnet32", family="cifar_resnet")
def resnet32(num_classes: int = 10, in_chans: int = 3, leaky_relu: float = 0.0) -> nn.Module:
    """CIFAR ResNet-32."""
    return CifarResNet(32, num_classes=num_classes, in_chans=in_chans, leaky_relu=leaky_relu)


@register_model("small_cnn", family="small")
def small_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 32) -> nn.Module:
    """Small CNN for digits and other tiny inputs (trains in seconds on a CPU)."""
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, width=width)
