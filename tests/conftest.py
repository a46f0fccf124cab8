"""Fixtures: a tiny synthetic dataset and tiny models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch

from lplgrad.data import Dataset
from lplgrad.models import LossPredictionModule, ResNet18
from tests.batchnorm import randomize_batchnorm
from tests.helpers import make_dataset


@pytest.fixture
def dataset() -> Dataset:
    return make_dataset()


@pytest.fixture
def model() -> ResNet18:
    torch.manual_seed(0)
    net = ResNet18(num_classes=4, width=4)
    randomize_batchnorm(net)
    return net


@pytest.fixture
def aux_model(model: ResNet18) -> LossPredictionModule:
    return LossPredictionModule(model.feature_channels, hidden=8)
