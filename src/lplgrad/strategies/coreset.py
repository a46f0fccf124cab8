"""Core-set (Sener & Savarese, ICLR 2018): greedy k-center on penultimate features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all


def min_distances(points: Tensor, centers: Tensor, chunk: int = 1024) -> Tensor:
    """Euclidean distance [N] from each point [N, D] to its nearest center [M, D] (inf if M = 0)."""
    nearest = torch.full((points.shape[0],), float("inf"), device=points.device)
    for start in range(0, centers.shape[0], chunk):
        distances = torch.cdist(points, centers[start : start + chunk])
        nearest = torch.minimum(nearest, distances.min(dim=1).values)
    return nearest


def k_center_greedy(points: Tensor, centers: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sener & Savarese Alg. 1: repeatedly add the point farthest from all centers.

    Returns positions [k] into ``points`` and each pick's distance at the time it
    was picked (its score). Ties go to the lower position.
    """
    nearest = min_distances(points, centers)
    picks, scores = [], []
    for _ in range(k):
        best = torch.argmax(nearest)  # stays a device tensor: no host sync per pick
        picks.append(best)
        scores.append(nearest[best])
        nearest = torch.minimum(nearest, torch.cdist(points, points[best].unsqueeze(0)).squeeze(1))
        nearest = nearest.index_fill(0, best.view(1), -1.0)  # never pick twice, even when points coincide
    return torch.stack(picks).cpu(), torch.stack(scores).cpu()


@register_strategy
@dataclass(frozen=True)
class CoreSet(Strategy):
    name = "coreset"
    color = "#1f77b4"

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        candidates = ctx.candidates.cpu().sort().values
        candidate_emb = predict_all(ctx.model, ctx.dataset, candidates, ctx.batch_size, embeddings=True)["embeddings"]
        labeled_emb = predict_all(ctx.model, ctx.dataset, ctx.labeled, ctx.batch_size, embeddings=True)["embeddings"]
        positions, scores = k_center_greedy(candidate_emb, labeled_emb, k)
        return Selection(candidates[positions], scores)
