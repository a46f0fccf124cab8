"""Strategies for small budgets that pick typical, covering images (Hacohen et al. 2022; Yehuda et al. 2022).

Both work on L2-normalised embeddings of the labeled and candidate images: the current model's
penultimate features, or a user's ``.npy`` file (``active.embeddings``: [N, D], one row per training
image in the pool's order, or any order with an index CSV, see ``embeddings.py``; ``lplgrad embed``
learns such features self-supervised).
- ``typiclust``: k-means into |L| + k clusters; for each pick, the largest cluster with the fewest
  labeled images, and in it the most typical image, typicality(x) = 1 / mean distance to its
  nearest neighbours (at most 20) in the cluster.
- ``probcover``: balls of radius delta around every image; delta is the largest radius whose balls
  stay at least 95% pure under k-means pseudo-labels (k = the number of classes). A ball around
  x is pure exactly when delta <= the distance from x to the nearest image of another pseudo-label,
  so that delta is the 5th percentile of those distances. Then greedy maximum coverage: pick the
  candidate whose ball holds the most images no labeled or picked ball holds yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from torch import Tensor

from lplgrad.data.embeddings import load_embeddings
from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all

NEIGHBOURS = 20  # TypiClust's k for typicality
PURITY = 0.95  # ProbCover's purity threshold
CHUNK = 2048  # rows of a distance matrix held at once


def normalized_embeddings(ctx: QueryContext, indices: Tensor) -> Tensor:
    """L2-normalised penultimate features [N, D] (float64) of training images at ``indices``."""
    features = predict_all(ctx.model, ctx.dataset, indices, ctx.batch_size, embeddings=True)["embeddings"].cpu()
    return torch.nn.functional.normalize(features.double(), dim=1)


def _kmeans(points: Tensor, clusters: int, generator: torch.Generator) -> np.ndarray:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit_predict(points.numpy())


def typicality(points: Tensor) -> Tensor:
    """1 / mean distance to the nearest min(20, n - 1) other points, for the points of one cluster."""
    if len(points) == 1:
        return torch.ones(1)
    neighbours = min(NEIGHBOURS, len(points) - 1)
    distances = torch.cdist(points, points)
    nearest = distances.topk(neighbours + 1, largest=False).values[:, 1:]  # the point itself is at 0
    return 1.0 / (nearest.mean(1) + 1e-12)


def typiclust_picks(labeled: Tensor, candidates: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Positions [k] into ``candidates`` and their typicality."""
    points = torch.cat([labeled, candidates])
    clusters = min(len(points), len(labeled) + k)
    assignment = torch.from_numpy(_kmeans(points, clusters, generator)).long()
    taken = torch.zeros(clusters, dtype=torch.long).index_add_(
        0, assignment[: len(labeled)], torch.ones(len(labeled), dtype=torch.long)
    )
    sizes = torch.bincount(assignment, minlength=clusters)
    available = torch.ones(len(candidates), dtype=torch.bool)
    candidate_cluster = assignment[len(labeled) :]
    picks, scores = [], []
    for _ in range(k):
        open_sizes = torch.bincount(candidate_cluster[available], minlength=clusters)
        # the fewest labeled first, then the largest; only clusters with a candidate left
        order = sorted((int(taken[c]), -int(sizes[c]), c) for c in range(clusters) if open_sizes[c] > 0)
        cluster = order[0][2]
        members = torch.nonzero((candidate_cluster == cluster) & available).flatten()
        in_cluster = torch.nonzero(assignment == cluster).flatten()
        typical = typicality(points[in_cluster])
        position_of = {int(p): i for i, p in enumerate(in_cluster)}
        member_scores = torch.stack([typical[position_of[len(labeled) + int(m)]] for m in members])
        best = int(torch.argmax(member_scores))
        picks.append(int(members[best]))
        scores.append(float(member_scores[best]))
        available[members[best]] = False
        taken[cluster] += 1
    return torch.tensor(picks), torch.tensor(scores)


def purity_radius(points: Tensor, pseudo_labels: Tensor) -> float:
    """The largest delta whose balls are at least 95% pure: the 5th percentile of each point's
    distance to the nearest point with another pseudo-label."""
    nearest_other = torch.full((len(points),), float("inf"), dtype=points.dtype)
    for start in range(0, len(points), CHUNK):
        distances = torch.cdist(points[start : start + CHUNK], points)
        same = pseudo_labels[start : start + CHUNK, None] == pseudo_labels[None, :]
        nearest_other[start : start + CHUNK] = distances.masked_fill(same, float("inf")).min(1).values
    finite = nearest_other[torch.isfinite(nearest_other)]
    return float(torch.quantile(finite, 1 - PURITY)) if finite.numel() else float("inf")


def max_coverage_picks(
    labeled: Tensor, candidates: Tensor, k: int, delta: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Greedy maximum coverage with balls of radius ``delta``: positions [k] into ``candidates``
    and how many uncovered images each pick's ball covered when it was picked. The balls are a
    sparse [points x points] incidence matrix, so each pick's gains are one sparse product."""
    points = torch.cat([labeled, candidates])
    rows, cols = [], []
    for start in range(0, len(points), CHUNK):
        near = torch.nonzero(torch.cdist(points[start : start + CHUNK], points) < delta)
        rows.append(near[:, 0] + start)
        cols.append(near[:, 1])
    row, col = torch.cat(rows).numpy(), torch.cat(cols).numpy()
    balls = sparse.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)), shape=(len(points), len(points)))
    uncovered = np.ones(len(points), dtype=np.float32)
    if len(labeled):
        uncovered[balls[: len(labeled)].sum(0).A1 > 0] = 0.0
    candidate_balls = balls[len(labeled) :]
    available = np.ones(len(candidates), dtype=bool)
    picks, scores = [], []
    for _ in range(k):
        gains = np.where(available, candidate_balls @ uncovered, -1.0)
        best = int(np.argmax(gains))
        if gains[best] <= 0:  # everything is covered: the rest at random, as the paper does
            remaining = np.flatnonzero(available)
            best = int(remaining[int(torch.randint(len(remaining), (1,), generator=generator))])
        picks.append(best)
        scores.append(max(float(gains[best]), 0.0))
        available[best] = False
        uncovered[candidate_balls[best].indices] = 0.0
    return torch.tensor(picks), torch.tensor(scores)


def _embeddings(ctx: QueryContext, candidates: Tensor, path: str | None, index: str | None) -> tuple[Tensor, Tensor]:
    """(candidates', labeled images') normalised embeddings, from the model or from the file
    ``path`` (``embeddings.py``); no labels gives an empty [0, D]."""
    labeled = ctx.labeled.cpu()
    if path is not None:
        table = load_embeddings(path, ctx.dataset, index)
        return table[candidates], table[labeled]
    pool = normalized_embeddings(ctx, candidates)
    if labeled.numel() == 0:
        return pool, pool.new_zeros(0, pool.shape[1])
    return pool, normalized_embeddings(ctx, labeled)


@dataclass(frozen=True)
class _OnEmbeddings(Strategy):
    """Picks among the candidates by their (and the labeled images') normalised embeddings."""

    embeddings: str | None = None  # a .npy file (active.embeddings); None: the model's penultimate features
    embeddings_index: str | None = None  # a path,row CSV for the .npy's rows (active.embeddings_index)

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        candidates = ctx.candidates.cpu().sort().values
        pool, labeled = _embeddings(ctx, candidates, self.embeddings, self.embeddings_index)
        positions, scores = self.picks(labeled, pool, k, ctx)
        return Selection(candidates[positions], scores.float())

    def picks(self, labeled: Tensor, pool: Tensor, k: int, ctx: QueryContext) -> tuple[Tensor, Tensor]:
        """Positions [k] into ``pool`` and their scores."""
        raise NotImplementedError


@register_strategy
@dataclass(frozen=True)
class TypiClust(_OnEmbeddings):
    """Typical images of the largest uncovered clusters (Hacohen, Dekel & Weinshall 2022)."""

    name = "typiclust"
    color = "#ff9896"

    def picks(self, labeled: Tensor, pool: Tensor, k: int, ctx: QueryContext) -> tuple[Tensor, Tensor]:
        return typiclust_picks(labeled, pool, k, ctx.generator)


@register_strategy
@dataclass(frozen=True)
class ProbCover(_OnEmbeddings):
    """Maximum coverage by pure balls (Yehuda, Dekel, Hacohen & Weinshall 2022)."""

    name = "probcover"
    color = "#c5b0d5"

    def picks(self, labeled: Tensor, pool: Tensor, k: int, ctx: QueryContext) -> tuple[Tensor, Tensor]:
        points = torch.cat([labeled, pool])
        classes = min(ctx.dataset.num_classes, len(points))
        pseudo = torch.from_numpy(_kmeans(points, classes, ctx.generator)).long()
        return max_coverage_picks(labeled, pool, k, purity_radius(points, pseudo), ctx.generator)
