"""Which training images are labeled, and in which round.

``labeled_at[i]`` is the round in which image i was labeled (0 = the initial
set) or -1 while it is unlabeled. Indices are always absolute indices into the
training split, never positions inside a candidate subset: mixing the two makes
users label the wrong images.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Pool:
    """Labeled/unlabeled bookkeeping over a training split of ``size`` images."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.labeled_at = torch.full((size,), -1, dtype=torch.long)

    def __len__(self) -> int:
        return self.labeled_at.numel()

    @property
    def num_labeled(self) -> int:
        return int((self.labeled_at >= 0).sum())

    def labeled_indices(self) -> Tensor:
        """Absolute indices of labeled images, ascending."""
        return torch.nonzero(self.labeled_at >= 0).flatten()

    def unlabeled_indices(self) -> Tensor:
        """Absolute indices of unlabeled images, ascending."""
        return torch.nonzero(self.labeled_at < 0).flatten()

    def label(self, indices: Tensor, round_index: int) -> None:
        """Mark ``indices`` as labeled in ``round_index``; refuses bad or already labeled indices."""
        indices = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        if round_index < 0:
            raise ValueError(f"round must be >= 0, got {round_index}")
        if indices.numel() == 0:
            return
        out_of_range = (indices < 0) | (indices >= len(self))
        if out_of_range.any():
            raise IndexError(f"indices out of range [0, {len(self)}): {indices[out_of_range][:5].tolist()}")
        if indices.unique().numel() != indices.numel():
            raise ValueError("duplicate indices in one labeling request")
        already = self.labeled_at[indices] >= 0
        if already.any():
            raise ValueError(f"indices already labeled: {indices[already][:5].tolist()}")
        self.labeled_at[indices] = round_index
