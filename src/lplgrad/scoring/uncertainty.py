"""Uncertainty scores from logits [N, C]; higher = more informative, always."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Predictive entropy H = -sum_c p_c log p_c (Shannon 1948); log C for a uniform prediction."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def margin(logits: Tensor) -> Tensor:
    """Negative margin between the two most probable classes, p_2 - p_1 (Scheffer et al. 2001)."""
    top2 = torch.softmax(logits.float(), dim=1).topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def least_confidence(logits: Tensor) -> Tensor:
    """1 - max_c p_c (Lewis & Gale 1994)."""
    return 1.0 - torch.softmax(logits.float(), dim=1).max(dim=1).values


def entropy_logit_gradient_norm(logits: Tensor) -> Tensor:
    """||dH/dz||_2, the norm of the entropy's gradient with respect to the logits z, in closed form:
    dH/dz_c = -p_c (log p_c + H). For a linear head z = W h + b the entropy gradient norm over its
    weights (LPLgrad's score, eq. 8) is ||dH/dz|| x ||[h, 1]||; this is that score without the
    factor ||[h, 1]||, which makes the gradient norm prefer images with large features."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    h = -(p * log_p).sum(dim=1, keepdim=True)
    return (p * (log_p + h)).norm(dim=1)
