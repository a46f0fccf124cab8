"""Which given labels to doubt: confident learning over out-of-sample probabilities.

Northcutt, Jiang & Chuang 2021, "Confident learning: estimating uncertainty in dataset labels":
with out-of-sample predicted probabilities p(x) (from a model that never saw x's label, e.g. k-fold),
the per-class threshold is t_j = mean of p_j(x) over images given label j (eq. 2). An image given
label i is counted in the confident joint at (i, j) for j = argmax_{k : p_k(x) >= t_k} p_k(x); it is
a label issue when that j differs from i (the off-diagonal, "confident joint" method, sec. 3.1).
Issues are ranked by self-confidence p_i(x), lowest first: the model's probability of the given label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LabelIssues:
    flagged: Tensor  # [N] bool: the model confidently contradicts the given label
    suggested: Tensor  # [N] int64: argmax_{k: p_k >= t_k} p_k (the given label where no class passes)
    self_confidence: Tensor  # [N] p_given(x)
    order: Tensor  # indices of the flagged images, most doubtful (lowest self-confidence) first


def per_class_thresholds(probabilities: Tensor, given: Tensor, classes: int) -> Tensor:
    """t_j = mean p_j(x) over images given label j (eq. 2); +inf for a class nobody was given, so
    no image is counted there (the method cannot say anything about an unseen class)."""
    sums = torch.zeros(classes, dtype=probabilities.dtype).index_add_(
        0, given, probabilities[torch.arange(given.numel()), given]
    )
    counts = torch.bincount(given, minlength=classes).to(probabilities.dtype)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("inf")))


def find_label_issues(probabilities: Tensor, given: Tensor) -> LabelIssues:
    """Confident-joint label issues of ``given`` [N] labels under out-of-sample ``probabilities`` [N, C]."""
    probabilities = probabilities.float().cpu()
    given = given.long().cpu()
    thresholds = per_class_thresholds(probabilities, given, probabilities.shape[1])
    above = probabilities >= thresholds
    confident = torch.where(above, probabilities, torch.full_like(probabilities, -1.0))
    suggested = confident.argmax(dim=1)
    counted = above.any(dim=1)  # images with no class above its threshold are not in the joint
    suggested = torch.where(counted, suggested, given)
    self_confidence = probabilities[torch.arange(given.numel()), given]
    flagged = counted & (suggested != given)
    doubtful = flagged.nonzero().flatten()
    order = doubtful[torch.argsort(self_confidence[doubtful], stable=True)]
    return LabelIssues(flagged, suggested, self_confidence, order)
