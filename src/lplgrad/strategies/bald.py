"""BALD (Houlsby et al. 2011; Gal, Islam & Ghahramani 2017): mutual information between the label
and the weights, estimated with MC dropout.

T stochastic passes of the classifier with dropout (rate ``dropout``) on the penultimate features,
BatchNorm and the backbone in eval mode (the features are computed once):
    MI(x) = H(mean_t p_t(x)) - mean_t H(p_t(x))
A deterministic model (dropout 0) has MI = 0 everywhere. The dropout masks come from the query's
seeded generator, so a round's scores repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lplgrad.errors import UserError
from lplgrad.scoring.uncertainty import entropy
from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k, top_k
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all


def mutual_information(
    features: Tensor, head: nn.Module, dropout: float, passes: int, generator: torch.Generator
) -> Tensor:
    """MI [N] of the head's predictions under ``passes`` dropout masks on ``features`` [N, D]."""
    probabilities = []
    with torch.no_grad():
        for _ in range(passes):
            keep = torch.rand(features.shape, generator=generator) >= dropout
            dropped = features * keep.to(features.device) / (1.0 - dropout) if dropout > 0 else features
            probabilities.append(torch.softmax(head(dropped).float(), dim=1))
    stacked = torch.stack(probabilities)  # [T, N, C]
    mean = stacked.mean(0)
    expected_entropy = entropy(stacked.clamp_min(1e-12).log().flatten(0, 1)).view(passes, -1).mean(0)
    return (entropy(mean.clamp_min(1e-12).log()) - expected_entropy).clamp(min=0)


@register_strategy
@dataclass(frozen=True)
class Bald(Strategy):
    """Bayesian active learning by disagreement, with MC dropout before the classifier."""

    name = "bald"
    color = "#ffbb78"
    dropout: float = 0.5
    passes: int = 20

    def select(self, ctx: QueryContext, k: int) -> Selection:
        """Under torchrun the features are computed in shards and gathered, and the dropout masks are
        drawn for all candidates at once, so the scores do not depend on the number of processes."""
        check_k(k, ctx.candidates.numel())
        return top_k(ctx.candidates, self.score(ctx), k)

    def score(self, ctx: QueryContext) -> Tensor:
        head = getattr(ctx.model, "fc", None)
        if not isinstance(head, nn.Module):
            raise UserError("bald needs a model whose classifier is its `fc` layer (lplgrad's ResNet18)")
        features = predict_all(ctx.model, ctx.dataset, ctx.candidates, ctx.batch_size, embeddings=True)["embeddings"]
        return mutual_information(features, head, self.dropout, self.passes, ctx.generator)
