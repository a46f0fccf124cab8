"""Uncertainty sampling from the main model's softmax: entropy, margin, least confidence, and the
entropy gradient norm at the logits."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lplgrad.scoring import uncertainty
from lplgrad.strategies.base import QueryContext, Strategy
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict


def _logits(ctx: QueryContext) -> Tensor:
    return predict(ctx.model, ctx.dataset, ctx.candidates, ctx.batch_size)["logits"]


@register_strategy
@dataclass(frozen=True)
class Entropy(Strategy):
    """Max predictive entropy (Shannon); the paper's "Entropy" baseline."""

    name = "entropy"
    color = "#2ca02c"

    def score(self, ctx: QueryContext) -> Tensor:
        return uncertainty.entropy(_logits(ctx))


@register_strategy
@dataclass(frozen=True)
class Margin(Strategy):
    """Smallest gap between the two most probable classes."""

    name = "margin"
    color = "#7f7f7f"

    def score(self, ctx: QueryContext) -> Tensor:
        return uncertainty.margin(_logits(ctx))


@register_strategy
@dataclass(frozen=True)
class LeastConfidence(Strategy):
    """Lowest top-class probability."""

    name = "least-confidence"
    color = "#8c564b"

    def score(self, ctx: QueryContext) -> Tensor:
        return uncertainty.least_confidence(_logits(ctx))


@register_strategy
@dataclass(frozen=True)
class EntropyLogitGradient(Strategy):
    """The entropy gradient norm at the logits, ||dH/dz||: ent-gradnorm's score without the feature
    size. For a linear head on frozen features ent-gradnorm is ||dH/dz|| x ||[h, 1]||, so it prefers
    images with large features; this keeps only the uncertainty factor (and is cheap: one forward
    pass, no per-sample gradients)."""

    name = "ent-logitgrad"
    color = "#98df8a"

    def score(self, ctx: QueryContext) -> Tensor:
        return uncertainty.entropy_logit_gradient_norm(_logits(ctx))
