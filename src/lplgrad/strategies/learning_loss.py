"""Learning Loss (Yoo & Kweon, CVPR 2019): query the images with the largest loss predicted by w_aux."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lplgrad.errors import UserError
from lplgrad.strategies.base import QueryContext, Strategy
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict


@register_strategy
@dataclass(frozen=True)
class LearningLoss(Strategy):
    name = "learning-loss"
    color = "#9467bd"
    uses_aux_model = True

    def score(self, ctx: QueryContext) -> Tensor:
        if ctx.aux_model is None:
            raise UserError("learning-loss needs w_aux (the loss prediction module) trained with the model")
        out = predict(ctx.model, ctx.dataset, ctx.candidates, ctx.batch_size, aux_model=ctx.aux_model)
        return out["predicted_loss"]
