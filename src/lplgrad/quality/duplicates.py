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

# Cosine similarity of EfficientNet-Lite0's pooled four-level features. Measured on the CIFAR-10
# folder (docs/quality.md): the nearest other image of 99.9% of 3,000 training images is below 0.985;
# a horizontal flip keeps a median 0.989, +15% brightness 0.993, a 2-pixel crop 0.974, JPEG at
# quality 50 0.954 (of 32-px photos upscaled). So 0.985 finds copies and light edits, rarely two
# different photos; heavier edits of tiny images are missed.
THRESHOLD = 0.985
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
    features: Tensor, others: Tensor | None = None, threshold: float = THRESHOLD, chunk: int = CHUNK
) -> Pairs:
    """Pairs of near duplicates within ``features`` [N, D] (i < j), or between ``features`` and
    ``others`` [M, D] (i in features, j in others) when given."""
    a = _unit(features)
    b = a if others is None else _unit(others)
    firsts, seconds, sims = [], [], []
    for start in range(0, a.shape[0], chunk):
        similarity = a[start : start + chunk] @ b.T  # [chunk, M]
        if others is None:  # each pair once, never an image with itself
            rows = torch.arange(start, start + similarity.shape[0]).unsqueeze(1)
            similarity = similarity.masked_fill(torch.arange(b.shape[0]).unsqueeze(0) <= rows, -2.0)
        i, j = (similarity >= threshold).nonzero(as_tuple=True)
        firsts.append(i + start)
        seconds.append(j)
        sims.append(similarity[i, j])
    if not firsts:
        empty = torch.empty(0, dtype=torch.long)
        return Pairs(empty, empty, torch.empty(0))
    first, second, similarity = torch.cat(firsts), torch.cat(seconds), torch.cat(sims)
    order = torch.argsort(similarity, descending=True, stable=True)
    return Pairs(first[order], second[order], similarity[order])


def keep_one_of_each(features: Tensor, threshold: float = THRESHOLD, chunk: int = CHUNK) -> Tensor:
    """Row indices (ascending) that keep the first image of every group of near duplicates: what a
    query may choose from, so one batch never holds two copies of a photo."""
    pairs = near_duplicates(features, threshold=threshold, chunk=chunk)
    dropped = torch.zeros(features.shape[0], dtype=torch.bool)
    # A pair (i, j) has i < j: drop j unless i itself was dropped, walking i in ascending order,
    # so a chain a~b~c keeps a and drops b and c (c is dropped through b only if c~a too; else kept).
    order = torch.argsort(pairs.first, stable=True)
    for i, j in zip(pairs.first[order].tolist(), pairs.second[order].tolist(), strict=True):
        if not dropped[i]:
            dropped[j] = True
    return (~dropped).nonzero().flatten()
