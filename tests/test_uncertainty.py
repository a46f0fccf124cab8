import math

import pytest
import torch

from lplgrad.scoring.uncertainty import entropy, least_confidence, margin


def test_entropy_of_uniform_is_log_c() -> None:
    assert entropy(torch.zeros(3, 10)).tolist() == pytest.approx([math.log(10)] * 3)


def test_entropy_of_a_confident_prediction_is_near_zero() -> None:
    assert entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_margin_and_least_confidence_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]))
    assert margin(logits).tolist() == pytest.approx([-0.2, -0.85])
    assert least_confidence(logits).tolist() == pytest.approx([0.5, 0.1])


def test_the_entropy_logit_gradient_is_autograd_and_the_head_gradient_norm_without_the_feature_norm() -> None:
    from lplgrad.scoring.uncertainty import entropy_logit_gradient_norm

    generator = torch.Generator().manual_seed(0)
    features = 3 * torch.rand(6, 5, generator=generator)
    head = torch.nn.Linear(5, 4)
    closed = entropy_logit_gradient_norm(head(features).detach())
    for i in range(6):  # one image at a time, by autograd: dH/dz, and dH/d(W, b) of the head
        head.zero_grad()
        logits = head(features[i : i + 1])
        logits.retain_grad()
        entropy(logits).sum().backward()
        assert closed[i].item() == pytest.approx(logits.grad.norm().item(), rel=1e-5)
        weights = torch.cat([head.weight.grad.flatten(), head.bias.grad]).norm()
        with_one = torch.cat([features[i], torch.ones(1)]).norm()
        assert weights.item() == pytest.approx(closed[i].item() * with_one.item(), rel=1e-5)
    assert entropy_logit_gradient_norm(torch.zeros(2, 3)).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
