"""The query interface: ``Strategy.select(QueryContext, k) -> Selection``.

A strategy reads the trained model(s) and the data, and returns k absolute
indices of training images to label next. Higher score = more informative,
always. A strategy never changes weights or train/eval mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lplgrad.data import Dataset
from lplgrad.errors import UserError
from lplgrad.runtime.distributed import gather, shard


@dataclass(frozen=True)
class QueryContext:
    """Everything a strategy may read.

    candidates: absolute indices into ``dataset.train`` that may be selected, int64 [M].
    labeled: absolute indices already labeled, int64 [L].
    generator: seeded CPU generator, the only source of randomness a strategy may use.
    aux_model: w_aux, when the strategy trained with it.
    """

    model: nn.Module
    dataset: Dataset
    candidates: Tensor
    labeled: Tensor
    generator: torch.Generator
    aux_model: nn.Module | None = None
    batch_size: int = 256  # images per forward pass of the forward-only scores


@dataclass(frozen=True)
class Selection:
    """Chosen absolute indices [k] and, when the strategy has them, their scores [k]."""

    indices: Tensor
    scores: Tensor | None = None


class QuerySizeError(UserError):
    """A query asked for no images, or for more than there are candidates (the pool is exhausted)."""


def check_k(k: int, num_candidates: int) -> None:
    if k < 1:
        raise QuerySizeError(f"query size must be >= 1, got {k}")
    if k > num_candidates:
        raise QuerySizeError(f"cannot select {k} images from {num_candidates} candidates")


def top_k(candidates: Tensor, scores: Tensor, k: int) -> Selection:
    """The k highest-scoring candidates; ties go to the lower image index, NaN scores last."""
    order = torch.argsort(candidates.cpu(), stable=True)
    candidates, scores = candidates.cpu()[order], scores.detach().float().cpu()[order]
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    best = torch.sort(scores, descending=True, stable=True).indices[:k]
    return Selection(candidates[best], scores[best])


class Strategy:
    """Base class. Score-based strategies implement ``score``; others override ``select``."""

    name: ClassVar[str] = ""
    uses_aux_model: ClassVar[bool] = False  # train w_aux jointly with w_main for this strategy
    color: ClassVar[str | None] = None  # its color in every figure (None: one derived from the name)
    ablation_of: ClassVar[str | None] = None  # the strategy this one is an ablation of (report Tables V/VI)

    @classmethod
    def options(cls) -> list[str]:
        """The options ``create_strategy`` accepts: the dataclass fields of the strategy."""
        return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []

    def select(self, ctx: QueryContext, k: int) -> Selection:
        """The top k by ``score``. Under torchrun each process scores its own slice of the
        candidates and the scores are gathered, so every process picks the same k."""
        check_k(k, ctx.candidates.numel())
        part = ctx.candidates[shard(ctx.candidates.numel())]
        if part.numel():
            scores = self.score(dataclasses.replace(ctx, candidates=part))
        else:  # more processes than candidates
            scores = torch.zeros(0, device=ctx.dataset.train.images.device)
        return top_k(ctx.candidates, gather(scores), k)

    def score(self, ctx: QueryContext) -> Tensor:
        """Informativeness [M] of each candidate, in ``ctx.candidates`` order."""
        raise NotImplementedError
