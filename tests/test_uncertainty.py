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
