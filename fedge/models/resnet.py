"""GroupNorm ResNets: a small one for 28-64 px inputs (the default) and ResNet-18 (FLAIR's standard).

Module names follow torchvision's layout (``conv1``, ``bn1``, ``layerN.M.convK``, ``downsample.0/1``, ``fc``)
so torchvision-style state dicts load; the norms are GroupNorm (no BatchNorm: Opacus needs per-sample
independence, and FL clients see tiny non-IID batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = group_norm(planes, groups)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = group_norm(planes, groups)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), group_norm(planes, groups)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetGN(nn.Module):
    """ResNet with GroupNorm. ``small_input`` swaps the 7x7/2 stem and max-pool for a 3x3/1 stem."""

    classifier_name = "fc"

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        small_input: bool = False,
        groups: int = 32,
        stem_width: int | None = None,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        w0 = stem_width or widths[0]
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, w0, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = group_norm(w0, groups)
        self.relu = nn.ReLU()
        inplanes = w0
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(inplanes, w, first_stride if i == 0 else 2, groups)]
            blocks += [BasicBlock(w, w, 1, groups) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = w
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet_gn_small(num_classes: int = 10, in_chans: int = 1) -> ResNetGN:
    """A 16-channel 3x3 stem and three stride-2 stages (32, 64, 128 channels, one block each).

    ~0.3M parameters and ~11M multiply-adds at 32x32: small enough to pretrain in minutes on 2 CPU cores.
    """
    return ResNetGN([1, 1, 1], [32, 64, 128], num_classes, in_chans, small_input=True, groups=8,
                    stem_width=16, first_stride=2)


def resnet18_gn(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False) -> ResNetGN:
    """ResNet-18 with GroupNorm(32) in torchvision's layout, as used by FLAIR's benchmarks."""
    return ResNetGN([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_chans, small_input, groups=32)
