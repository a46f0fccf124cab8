"""w_main in ``train.finetune = all`` with a pretrained backbone: every weight trains, on images.

The round feeds images at the data's size, normalised with the data's mean/std and augmented as
for ResNet-18 (``data/augment.py``). This wrapper turns such a batch into what the backbone's
weights expect: back to [0, 1] pixels, grey to three channels, resized to the backbone's input size
(bilinear, antialiased, on the device, as ``train.features`` does for the cached modes) and
normalised as its weights were trained. It owns no parameter, so the gradient norms are over the
backbone's (all of them) and the feature maps w_aux reads are the backbone's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lplgrad.models.backbones import BackboneSpec
from lplgrad.models.resnet import ModelOutput


class PretrainedInput(nn.Module):
    data_mean: Tensor  # [1, C, 1, 1] buffers (registered in __init__)
    data_std: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, data_mean: Sequence[float], data_std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        self.feature_channels = list(spec.feature_channels)
        self.image_size = spec.image_size
        # Buffers, so they follow .to(device); not persistent: they are rebuilt from the architecture.
        for name, values in (
            ("data_mean", data_mean),
            ("data_std", data_std),
            ("mean", spec.mean),
            ("std", spec.std),
        ):
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1), False)

    @property
    def fc(self) -> nn.Module:
        """The classifier, where the strategies that read it look (not a second copy in the state dict)."""
        return self.backbone.fc  # type: ignore[return-value]

    def forward(self, x: Tensor) -> ModelOutput:
        pixels = x * self.data_std + self.data_mean  # the data's standardisation undone: [0, 1]
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        return self.backbone((pixels - self.mean) / self.std)
