"""Gradient-norm strategies: LPLgrad, Ent-GradNorm (its ablation without w_aux), Expected-GradNorm."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from torch import Tensor

from lplgrad.scoring.gradnorm import Reduction, ScoreLoss, per_sample_grad_norms
from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.coreset import k_center_greedy
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all


@dataclass(frozen=True)
class _GradNormStrategy(Strategy):
    reduction: Reduction = "layer_sum"
    score_bf16: bool = False  # bf16 autocast: faster on GPUs, approximate scores
    loss: ClassVar[ScoreLoss] = "entropy"

    def score(self, ctx: QueryContext) -> Tensor:
        """All candidates in one engine call: it probes the model once and chunks by its memory
        budget (not by ``ctx.batch_size``); each chunk of images is gathered and normalized only
        when its turn comes, so memory is bounded by a chunk, not by the candidate subset."""
        images = ctx.dataset.train.images

        def chunk_images(indices: Tensor) -> Tensor:
            return ctx.dataset.normalize(images[indices.to(images.device)])

        return per_sample_grad_norms(
            ctx.model,
            ctx.candidates,
            reduction=self.reduction,
            loss=self.loss,
            bf16=self.score_bf16,
            transform=chunk_images,
        )


@register_strategy
@dataclass(frozen=True)
class LPLgrad(_GradNormStrategy):
    """LPLgrad (Gul et al.): train w_main with w_aux, query by the entropy gradient norm."""

    name = "lplgrad"
    color = "#e377c2"
    uses_aux_model = True


@register_strategy
@dataclass(frozen=True)
class EntGradNorm(_GradNormStrategy):
    """Entropy gradient norm on a model trained without w_aux (Wang et al. 2022; LPLgrad "w/o w_aux")."""

    name = "ent-gradnorm"
    color = "#ff7f0e"
    ablation_of = "lplgrad"  # the paper's "w/o w_aux": the same query, no auxiliary model


@register_strategy
@dataclass(frozen=True)
class ExpectedGradNorm(_GradNormStrategy):
    """Expected cross-entropy gradient norm over the posterior (Wang et al. 2022, scheme 0)."""

    name = "expected-gradnorm"
    color = "#d62728"
    loss = "expected"


@register_strategy
@dataclass(frozen=True)
class LPLgradDiverse(_GradNormStrategy):
    """LPLgrad inside a diversity step (ours, beyond the paper): the top ``pool_factor`` x k
    candidates by entropy-gradient norm, then greedy k-center among them on penultimate features
    (farthest from the labeled set and from earlier picks), so a batch is not k near-duplicates."""

    name = "lplgrad-diverse"
    color = "#f7b6d2"
    uses_aux_model = True
    pool_factor: int = 10

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        shortlist = super().select(ctx, min(ctx.candidates.numel(), self.pool_factor * k))  # sharded scoring
        embed = partial(predict_all, ctx.model, ctx.dataset, batch_size=ctx.batch_size, embeddings=True)
        positions, _ = k_center_greedy(embed(shortlist.indices)["embeddings"], embed(ctx.labeled)["embeddings"], k)
        assert shortlist.scores is not None
        return Selection(shortlist.indices[positions], shortlist.scores[positions])
