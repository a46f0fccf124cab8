import pytest
import torch

from lplgrad.train.losses import loss_prediction_loss


def test_even_batch_matches_hand_computed_pairs() -> None:
    predicted = torch.tensor([0.5, 2.0, 1.0, 0.2])
    target = torch.tensor([3.0, 1.0, 2.0, 0.5])
    # Pairs (0, 3) and (1, 2).
    # (0, 3): l0 > l3 -> sign +1, pred diff 0.5 - 0.2 = 0.3 -> max(0, 1 - 0.3) = 0.7
    # (1, 2): l1 < l2 -> sign -1, pred diff 2.0 - 1.0 = 1.0 -> max(0, 1 + 1.0) = 2.0
    assert loss_prediction_loss(predicted, target).item() == pytest.approx((0.7 + 2.0) / 2)


def test_odd_batch_leaves_the_middle_sample_out() -> None:
    predicted = torch.tensor([3.0, 100.0, 0.0])
    target = torch.tensor([5.0, -100.0, 1.0])
    # One pair (0, 2): sign +1, diff 3 -> max(0, 1 - 3) = 0; the middle sample would add a lot.
    assert loss_prediction_loss(predicted, target).item() == 0.0
    assert loss_prediction_loss(predicted, target, margin=4.0).item() == pytest.approx(1.0)


def test_ties_count_as_minus_one_and_margin_is_used() -> None:
    predicted = torch.tensor([0.0, 0.0])
    target = torch.tensor([1.0, 1.0])
    assert loss_prediction_loss(predicted, target, margin=0.5).item() == pytest.approx(0.5)


def test_batch_of_one_is_zero_and_still_backpropagates() -> None:
    predicted = torch.tensor([1.5], requires_grad=True)
    loss = loss_prediction_loss(predicted, torch.tensor([2.0]))
    loss.backward()
    assert loss.item() == 0.0
    assert predicted.grad is not None


def test_true_losses_are_detached() -> None:
    predicted = torch.tensor([0.1, 0.4], requires_grad=True)
    target = torch.tensor([2.0, 1.0], requires_grad=True)
    loss_prediction_loss(predicted, target).backward()
    assert target.grad is None


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        loss_prediction_loss(torch.zeros(4), torch.zeros(3))
