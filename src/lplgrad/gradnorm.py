"""Per-sample gradient norms of an unsupervised loss, the querying score of LPLgrad.

For a candidate x with softmax output p = softmax(w_main(x)), LPLgrad (Sec. III.C,
following Wang et al. 2022) scores x by the norm of the gradient of its predictive
entropy w.r.t. all parameters of w_main, with BatchNorm in eval mode and no update:

    s(x) = || d/dtheta H(p) ||,   H(p) = -sum_c p_c log p_c

``reduction="global"`` is the paper's eq. 8: the L2 (Frobenius) norm of the whole
gradient. ``reduction="layer_sum"`` is what the paper's public code computes:
the sum over parameter tensors of each tensor's L2 norm.

``loss="expected"`` is Wang et al.'s scheme 0, the expected cross-entropy over the
model's own posterior with the posterior held as constant weights:

    L_exp(x) = sum_c stopgrad(p_c) * CE(w_main(x), c) = -sum_c stopgrad(p_c) log p_c
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lplgrad.inference import eval_mode
from lplgrad.models.output import split_output

Reduction = Literal["layer_sum", "global"]
ScoreLoss = Literal["entropy", "expected"]


def score_loss(logits: Tensor, loss: ScoreLoss) -> Tensor:
    """Per-sample unsupervised loss [B] whose gradient norm is the score."""
    log_p = torch.log_softmax(logits, dim=1)
    if loss == "entropy":
        return -(log_p.exp() * log_p).sum(dim=1)
    if loss == "expected":
        return -(log_p.detach().exp() * log_p).sum(dim=1)
    raise ValueError(f"unknown loss {loss!r}; choose 'entropy' or 'expected'")


def reduce_norms(squared_norms: Sequence[Tensor], reduction: Reduction) -> Tensor:
    """Combine per-parameter-tensor squared norms (each [B]) into one score per sample [B]."""
    stacked = torch.stack(list(squared_norms))  # [P, B]
    if reduction == "layer_sum":
        return stacked.clamp(min=0).sqrt().sum(0)
    if reduction == "global":
        return stacked.sum(0).clamp(min=0).sqrt()
    raise ValueError(f"unknown reduction {reduction!r}; choose 'layer_sum' or 'global'")


def per_sample_grad_norms_loop(
    model: nn.Module,
    inputs: Tensor,
    *,
    reduction: Reduction = "layer_sum",
    loss: ScoreLoss = "entropy",
) -> Tensor:
    """Reference implementation: one forward and one backward pass per sample (the public code's way).

    Uses torch.autograd.grad so the model's ``.grad`` fields are never touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    scores = []
    with eval_mode(model):
        for x in inputs.split(1):
            logits, _ = split_output(model(x))
            grads = torch.autograd.grad(score_loss(logits, loss).sum(), params, allow_unused=True)
            scores.append(reduce_norms([g.pow(2).sum().reshape(1) for g in grads if g is not None], reduction))
    return torch.cat(scores).detach()


def per_sample_grad_norms(
    model: nn.Module,
    inputs: Tensor,
    *,
    reduction: Reduction = "layer_sum",
    loss: ScoreLoss = "entropy",
) -> Tensor:
    """Score [B]: norm of d loss(x_i) / d theta for each input x_i of ``inputs`` [B, ...]."""
    return per_sample_grad_norms_loop(model, inputs, reduction=reduction, loss=loss)
