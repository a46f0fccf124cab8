"""w_main in ``train.finetune = head`` mode: a linear classifier on a frozen backbone's cached features.

Its input is one row of cached features shaped [B, sum(C_k), 1, 1]: the backbone's four feature
maps, each globally average-pooled, concatenated (``train.features``). It returns the logits of the
last level (the backbone's penultimate features, what its own classifier reads) and the four levels
as [B, C_k, 1, 1] maps, so w_aux (global average pool -> linear per level) reads the same
multi-level features from cache that it reads from a full backbone, and every strategy works as it
does on images. The gradient-norm scores are then over the head's parameters: a Linear layer, whose
per-sample norm has a closed form, ||dH/dz|| x ||[h, 1]|| (the bias's column included).
"""

from __future__ import annotations

from torch import Tensor, nn

from lplgrad.models.resnet import ModelOutput


class FeatureHead(nn.Module):
    def __init__(self, feature_channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.feature_channels = list(feature_channels)
        self.fc = nn.Linear(feature_channels[-1], num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        levels = list(x.split(self.feature_channels, dim=1))  # [B, C_k, 1, 1] each
        return ModelOutput(self.fc(levels[-1].flatten(1)), levels)
