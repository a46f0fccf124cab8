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


@pytest.fixture(autouse=True)
def projects_train_from_scratch(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Labeling projects default to a pretrained EfficientNet-Lite0 head; the tests of the project's
    mechanics keep the former default (ResNet-18 from scratch, lplgrad), which needs no 224-px
    feature pass. Tests marked ``pretrained_default`` see the real default."""
    if request.node.get_closest_marker("pretrained_default"):
        return
    from lplgrad.project import settings

    scratch = {"model.backbone": "resnet18", "train.finetune": "all", "active.strategies": ["lplgrad"]}
    monkeypatch.setattr(settings, "PROJECT_DEFAULTS", {**settings.PROJECT_DEFAULTS, **scratch})
