"""Exact and near duplicates by cosine similarity of image features, a chunk at a time.

Two images whose features (a pretrained backbone's pooled features, or SimCLR embeddings) have a
cosine similarity >= a threshold are near duplicates: re-encoded, resized or slightly cropped copies
of one photo (Barz & Denzler 2020, "Do we train on test data? Purging CIFAR of near-duplicates",
found 3.3% of CIFAR-10's test images so duplicated in its training set). Memory is bounded by
``chunk`` rows of the similarity matrix, never N x N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Cosine similarity of EfficientNet-Lite0's pooled four-level features from which two images count
# as near duplicates. Measured on a 10,000 + 3,000 subset of the CIFAR-10 folder (docs/quality.md):
# at 0.97, 20 test images have a near duplicate among the training images, what Barz & Denzler's
# 3.3% over all 50,000 training images implies for this subset, and 7 of 8 pairs inspected between
# 0.97 and 0.985 are the same photo; a horizontal flip keeps a median 0.989, a 2-pixel crop 0.974,
# JPEG at quality 50 0.954 (32-px photos upscaled, so heavier edits are missed).
THRESHOLD = 0.97
FLOOR = 0.95  # pairs from this similarity are stored, so the threshold can be raised or lowered later
NEIGHBOURS = 5  # at most this many stored pairs per newly computed image: bounded even where all look alike
CHUNK = 1024


@dataclass(frozen=True)
class Pairs:
    """Pairs (first[i], second[i]) of row indices with their cosine ``similarity[i]``, most similar first."""

    first: Tensor
    second: Tensor
    similarity: Tensor

    def __len__(self) -> int:
        return int(self.first.numel())


def _unit(features: Tensor) -> Tensor:
    return torch.nn.functional.normalize(features.float(), dim=1)


def near_duplicates(
    features: Tensor,
    others: Tensor | None = None,
    threshold: float = THRESHOLD,
    chunk: int = CHUNK,
    per_row: int | None = None,
) -> Pairs:
    """Pairs of near duplicates within ``features`` [N, D] (i < j), or between ``features`` and
    ``others`` [M, D] (i in features, j in others) when given. With ``per_row``, only each row's
    ``per_row`` most similar are considered: where many images look alike the pairs stay bounded
    (rows x per_row), never rows x M."""
    a = _unit(features)
    b = a if others is None else _unit(others)
    firsts, seconds, sims = [], [], []
    for start in range(0, a.shape[0], chunk):
        similarity = a[start : start + chunk] @ b.T  # [chunk, M]
        if others is None:  # each pair once, never an image with itself
            rows = torch.arange(start, start + similarity.shape[0]).unsqueeze(1)
            similarity = similarity.masked_fill(torch.arange(b.shape[0]).unsqueeze(0) <= rows, -2.0)
        if per_row is None:
            i, j = (similarity >= threshold).nonzero(as_tuple=True)
            values = similarity[i, j]
        else:
            best, at = similarity.topk(min(per_row, similarity.shape[1]), dim=1)
            i, column = (best >= threshold).nonzero(as_tuple=True)
            j, values = at[i, column], best[i, column]
        firsts.append(i + start)
        seconds.append(j)
        sims.append(values)
    if not firsts:
        empty = torch.empty(0, dtype=torch.long)
        return Pairs(empty, empty, torch.empty(0))
    first, second, similarity = torch.cat(firsts), torch.cat(seconds), torch.cat(sims)
    order = torch.argsort(similarity, descending=True, stable=True)
    return Pairs(first[order], second[order], similarity[order])


def top_neighbours(pairs: Pairs, per_row: int = NEIGHBOURS) -> Pairs:
    """At most ``per_row`` pairs for each ``first`` row, the most similar (``pairs`` is sorted)."""
    seen: dict[int, int] = {}
    keep = []
    for index, row in enumerate(pairs.first.tolist()):
        seen[row] = seen.get(row, 0) + 1
        if seen[row] <= per_row:
            keep.append(index)
    chosen = torch.tensor(keep, dtype=torch.long)
    return Pairs(pairs.first[chosen], pairs.second[chosen], pairs.similarity[chosen])
