"""Shared fixtures: a tiny synthetic dataset and tiny models, so the suite runs in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from lplgrad.data import Augment, Dataset, Split
from lplgrad.models import LossPredictionModule, ResNet18


def make_dataset(num_train: int = 64, num_test: int = 32, classes: int = 4, size: int = 8, seed: int = 0) -> Dataset:
    """Class-dependent mean brightness + noise, so a model can learn something."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.arange(n) % classes
        base = (labels.float() * (200 / classes) + 20).view(n, 1, 1, 1)
        noise = torch.randn(n, 3, size, size, generator=generator) * 20
        return Split((base + noise).clamp(0, 255).to(torch.uint8), labels)

    return Dataset(
        "synthetic",
        split(num_train),
        split(num_test),
        [f"c{i}" for i in range(classes)],
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        Augment(crop_padding=1, flip=True),
    )


@pytest.fixture
def dataset() -> Dataset:
    return make_dataset()


@pytest.fixture
def model() -> ResNet18:
    torch.manual_seed(0)
    net = ResNet18(num_classes=4, width=4)
    # Non-trivial BatchNorm statistics so eval-mode BN is not the identity.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.fixture
def loss_module(model: ResNet18) -> LossPredictionModule:
    return LossPredictionModule(model.feature_channels, hidden=8)
