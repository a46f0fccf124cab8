"""ResNet-18 (He et al. 2016) that also returns its four stage outputs.

Two stems: the CIFAR variant (3x3 conv, stride 1, no max-pool) used for 32x32
inputs, as in the LPLgrad and Learning-Loss experiments, and the ImageNet stem
(7x7 conv stride 2 + 3x3 max-pool) for larger images such as Caltech-101.
``width`` is the channel count of the first stage (64 in the paper); the stages
have width, 2*width, 4*width, 8*width channels, so a narrow net runs on a CPU.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Stem = Literal["cifar", "imagenet"]


class ModelOutput(NamedTuple):
    """What a model of this toolkit returns: logits [B, C] and feature maps [B, C_k, H_k, W_k]."""

    logits: Tensor
    features: list[Tensor]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (projection shortcut when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 returning ``ModelOutput(logits, [stage1, stage2, stage3, stage4])``.

    The penultimate embedding (used by core-set) is the global average pool of
    the last stage, which is exactly what the linear head reads.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        stem: Stem = "cifar",
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' or 'imagenet'")
        channels = [width, 2 * width, 4 * width, 8 * width]
        self.feature_channels = channels
        stages = []
        in_ch = width
        for i, out_ch in enumerate(channels):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.stem(x)
        features = []
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return ModelOutput(logits, features)
