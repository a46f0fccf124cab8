"""Random sampling: the baseline every method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.registry import register_strategy


@register_strategy
@dataclass(frozen=True)
class RandomSampling(Strategy):
    name = "random"
    color = "#bcbd22"

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        order = torch.randperm(ctx.candidates.numel(), generator=ctx.generator)[:k]
        return Selection(ctx.candidates.cpu()[order])
