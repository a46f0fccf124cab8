"""BADGE (Ash et al., ICLR 2020): k-means++ seeding over last-layer gradient embeddings.

Each candidate's embedding is the gradient of the cross-entropy at its own predicted class
w.r.t. the last linear layer: g = (p - e_yhat) outer h, with p the softmax and h the penultimate
features. It is never formed: for g_i = a_i outer h_i,
    ||g_i||^2 = ||a_i||^2 ||h_i||^2   and   <g_i, g_j> = <a_i, a_j> <h_i, h_j>,
so a squared distance costs O(C + D) instead of O(C D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all


def gradient_factors(logits: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    """(a = p - e_yhat [N, C], h [N, D]): the two factors of each gradient embedding a outer h."""
    p = torch.softmax(logits.float(), dim=1)
    a = p - torch.nn.functional.one_hot(p.argmax(dim=1), p.shape[1]).float()
    return a, features.float()


def kmeans_pp(a: Tensor, h: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) over the embeddings a_i outer h_i.

    The first pick is the largest embedding (as BADGE does); each next one is drawn with
    probability proportional to its squared distance to the nearest pick. Returns positions [k]
    and the squared distance each pick had when it was drawn (its score).
    """
    a_norm2, h_norm2 = (a * a).sum(1), (h * h).sum(1)
    norm2 = a_norm2 * h_norm2  # ||g_i||^2
    first = int(torch.argmax(norm2))
    picks, scores = [first], [float(norm2[first])]
    nearest = _squared_distances(a, h, norm2, first)
    for _ in range(k - 1):
        nearest[picks[-1]] = 0.0
        weights = nearest.clamp(min=0).double().cpu()
        weights[picks] = 0.0
        if float(weights.sum()) <= 0:  # every remaining point coincides with a pick: take the first unpicked
            remaining = torch.ones(len(weights), dtype=torch.bool)
            remaining[picks] = False
            choice = int(torch.nonzero(remaining)[0])
        else:
            choice = int(torch.multinomial(weights, 1, generator=generator))
        picks.append(choice)
        scores.append(float(nearest[choice]))
        nearest = torch.minimum(nearest, _squared_distances(a, h, norm2, choice))
    return torch.tensor(picks), torch.tensor(scores)


def _squared_distances(a: Tensor, h: Tensor, norm2: Tensor, center: int) -> Tensor:
    """||g_i - g_c||^2 for every i, from the factors."""
    inner = (a @ a[center]) * (h @ h[center])
    return norm2 + norm2[center] - 2 * inner


@register_strategy
@dataclass(frozen=True)
class Badge(Strategy):
    """Diverse and uncertain: large gradient embeddings, spread out by k-means++ seeding."""

    name = "badge"
    color = "#17becf"

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        candidates = ctx.candidates.cpu().sort().values  # a fixed order, so the seeded draw repeats
        out = predict_all(ctx.model, ctx.dataset, candidates, ctx.batch_size, embeddings=True)
        a, h = gradient_factors(out["logits"], out["embeddings"])
        positions, scores = kmeans_pp(a.cpu(), h.cpu(), k, ctx.generator)
        return Selection(candidates[positions], scores)
