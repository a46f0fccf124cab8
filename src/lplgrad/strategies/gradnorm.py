"""Gradient-norm strategies: LPLgrad, Ent-GradNorm (its ablation without w_aux), Expected-GradNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lplgrad.gradnorm import Reduction, ScoreLoss, per_sample_grad_norms
from lplgrad.inference import batches
from lplgrad.strategies.base import QueryContext, Strategy
from lplgrad.strategies.registry import register_strategy


@dataclass(frozen=True)
class _GradNormStrategy(Strategy):
    reduction: Reduction = "layer_sum"
    mixed_precision: bool = False  # bf16 autocast: faster on GPUs, approximate scores
    loss: ClassVar[ScoreLoss] = "entropy"

    def score(self, ctx: QueryContext) -> Tensor:
        images = ctx.dataset.train.images
        return torch.cat(
            [
                per_sample_grad_norms(
                    ctx.model, x, reduction=self.reduction, loss=self.loss, mixed_precision=self.mixed_precision
                )
                for x in batches(images, ctx.candidates, ctx.dataset, ctx.batch_size)
            ]
        )


@register_strategy
@dataclass(frozen=True)
class LPLgrad(_GradNormStrategy):
    """LPLgrad (Gul et al.): train w_main with w_aux, query by the entropy gradient norm."""

    name = "lplgrad"
    uses_loss_module = True


@register_strategy
@dataclass(frozen=True)
class EntGradNorm(_GradNormStrategy):
    """Entropy gradient norm on a model trained without w_aux (Wang et al. 2022; LPLgrad "w/o w_aux")."""

    name = "ent-gradnorm"


@register_strategy
@dataclass(frozen=True)
class ExpectedGradNorm(_GradNormStrategy):
    """Expected cross-entropy gradient norm over the posterior (Wang et al. 2022, scheme 0)."""

    name = "expected-gradnorm"
    loss = "expected"
