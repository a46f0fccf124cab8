"""The loss prediction module w_aux of Yoo & Kweon, "Learning Loss for Active Learning" (CVPR 2019).

For each tapped feature map: global average pool -> linear to ``hidden`` -> ReLU;
the per-stage vectors are concatenated and a last linear layer predicts one
scalar, the (unnormalized) loss of the main model on that sample (their Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lplgrad.models.output import split_output


class LossPredictionModule(nn.Module):
    """Predicts the main model's per-sample loss from its multi-level feature maps."""

    def __init__(self, feature_channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        if not feature_channels:
            raise ValueError("w_aux (the loss prediction module) needs at least one feature map")
        self.branches = nn.ModuleList(nn.Linear(c, hidden) for c in feature_channels)
        self.head = nn.Linear(hidden * len(feature_channels), 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features: list of [B, C_k, H_k, W_k] (or [B, C_k]) -> predicted loss [B]."""
        if len(features) != len(self.branches):
            raise ValueError(f"w_aux built for {len(self.branches)} feature maps, got {len(features)}")
        hidden = []
        for feature, branch in zip(features, self.branches, strict=True):
            pooled = feature.flatten(2).mean(2) if feature.dim() > 2 else feature
            hidden.append(F.relu(branch(pooled)))
        return self.head(torch.cat(hidden, dim=1)).squeeze(1)

    @classmethod
    def for_model(cls, model: nn.Module, example: Tensor, hidden: int = 128) -> LossPredictionModule:
        """Build a module sized for ``model`` by one forward pass on ``example`` [1, C, H, W].

        Lets users bring any nn.Module whose forward returns (logits, feature maps).
        """
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, features = split_output(model(example))
        model.train(was_training)
        if features is None:
            raise ValueError("the model returns only logits; w_aux needs its feature maps")
        return cls([f.shape[1] for f in features], hidden)
