"""Building the models of a round: w_main (ResNet-18, its stem chosen by the image size) and w_aux."""

from __future__ import annotations

import torch
from torch import nn

from lplgrad.config.schema import RunConfig
from lplgrad.data import Dataset
from lplgrad.models.head import FeatureHead
from lplgrad.models.loss_module import LossPredictionModule
from lplgrad.models.model_file import Architecture
from lplgrad.models.resnet import ResNet18


def model_stem(config: RunConfig, height: int) -> str:
    """ResNet-18's stem: ``model.stem``, or for "auto" the CIFAR stem up to 64 px and the ImageNet one above."""
    return config.model.stem if config.model.stem != "auto" else ("cifar" if height <= 64 else "imagenet")


def build_models(config: RunConfig, dataset: Dataset, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Seeded w_main and w_aux (its loss prediction module), on ``device``: ResNet-18 (stem by image
    size) on images, or, on a frozen backbone's cached features (``train.finetune = head``), a
    linear head whose w_aux reads the backbone's four pooled feature levels."""
    with torch.random.fork_rng(devices=[]):  # seeds the initialization without touching the caller's generator
        torch.manual_seed(seed)
        model: nn.Module
        if dataset.feature_channels:
            model = FeatureHead(list(dataset.feature_channels), dataset.num_classes)
        else:
            stem = model_stem(config, dataset.image_shape[1])
            model = ResNet18(dataset.num_classes, dataset.image_shape[0], config.model.width, stem)  # type: ignore[arg-type]
        aux_model = LossPredictionModule(model.feature_channels, config.model.aux_hidden)
    return model.to(device), aux_model.to(device)


def architecture(config: RunConfig, dataset: Dataset) -> Architecture:
    """What ``build_models`` built for this config and data, as a model file records it."""
    return Architecture(
        classes=list(dataset.classes),
        channels=dataset.image_shape[0],
        image_size=dataset.image_shape[1],
        mean=list(dataset.mean),
        std=list(dataset.std),
        width=config.model.width,
        stem=model_stem(config, dataset.image_shape[1]),
        aux_hidden=config.model.aux_hidden,
        backbone=config.model.backbone,
        weights=config.model.weights,
        feature_channels=list(dataset.feature_channels),
    )
