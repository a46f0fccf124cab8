"""w_main in ``train.finetune = last``: a pretrained backbone's last stage and classifier, trained on
its frozen trunk's cached output.

The trunk (every stage before the last) is frozen, so its output on an image never changes: it is
computed once per image (``train.features.pooled_features`` with ``cut="last"``) and a round trains only the last stage
(EfficientNet-Lite0: its stages 8 and 9 of Table 1, the 320-channel MBConv block and the 1x1
convolution to 1,280 channels; a torchvision ResNet: layer4) and the classifier. A cached row is
[B, D, 1, 1] with D = C_1 + C_2 + C_3 + C*h*w: the first three feature levels globally average-pooled
(what w_aux reads of the frozen part) followed by the trunk's last map [C, h, w], flattened. The
forward pass returns the logits and the four levels, as every w_main does, so w_aux, LPLgrad's joint
training and every strategy work unchanged, and the gradient-norm scores are over the trainable
parameters: the last stage's and the classifier's.

There is no augmentation in this mode (the cache holds the trunk's output of the image itself), as
in ``head`` mode; ``train.finetune = all`` trains every weight on augmented images instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from lplgrad.models.resnet import ModelOutput


class LastStageHead(nn.Module):
    def __init__(
        self,
        last_stage: nn.Module,
        classifier: nn.Linear,
        dropout: nn.Module,
        feature_channels: list[int],
        trunk_map: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.last_stage = last_stage
        self.dropout = dropout
        self.fc = classifier  # named fc as in every w_main: the strategies that read the classifier find it
        self.feature_channels = list(feature_channels)
        self.trunk_map = tuple(trunk_map)  # (C, h, w) of the last stage's input

    def forward(self, x: Tensor) -> ModelOutput:
        pooled = self.feature_channels[:-1]
        flat = x.flatten(1)  # [B, D]
        levels = [level[:, :, None, None] for level in flat[:, : sum(pooled)].split(pooled, dim=1)]
        trunk_map = flat[:, sum(pooled) :].reshape(-1, *self.trunk_map)
        last = self.last_stage(trunk_map)  # [B, C_4, h', w']
        logits = self.fc(self.dropout(last.mean(dim=(2, 3))))
        return ModelOutput(logits, [*levels, last])
