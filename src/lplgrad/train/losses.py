"""Loss functions of the training phase."""

from __future__ import annotations

from torch import Tensor


def loss_prediction_loss(predicted: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Pairwise margin ranking loss of Yoo & Kweon (2019), eq. 2.

    The batch is split into pairs (i, B-1-i) for i < B // 2; with odd B the middle
    sample has no partner and is left out. For each pair, with the true losses
    ``target`` detached::

        sign = +1 if l_i > l_j else -1
        L    = max(0, margin - sign * (pred_i - pred_j))

    and the result is the mean over pairs (0 when there is no pair).

    predicted, target: [B] predicted and true per-sample losses.
    """
    if predicted.shape != target.shape or predicted.dim() != 1:
        raise ValueError(f"expected two [B] tensors, got {tuple(predicted.shape)} and {tuple(target.shape)}")
    half = predicted.shape[0] // 2
    if half == 0:
        # Keep the graph so callers can always backpropagate the total loss.
        return predicted.sum() * 0.0
    target = target.detach()
    pred_diff = predicted[:half] - predicted.flip(0)[:half]
    target_diff = target[:half] - target.flip(0)[:half]
    sign = (target_diff > 0).to(predicted.dtype) * 2 - 1
    return (margin - sign * pred_diff).clamp(min=0).mean()
