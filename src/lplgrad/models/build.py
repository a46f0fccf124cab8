"""Building the models of a round: w_main and w_aux, by ``model.backbone`` and ``train.finetune``.

- resnet18 (from scratch, ``finetune = all``): ResNet-18, its stem chosen by the image size.
- a pretrained backbone, ``finetune = head``: a linear head on its cached pooled features.
- ``finetune = last``: its last stage and classifier (pretrained weights) on its trunk's cached output.
- ``finetune = all``: the whole pretrained backbone on images, resized to its input size.
"""

from __future__ import annotations

import torch
from torch import nn

from lplgrad.config.schema import RunConfig
from lplgrad.data import Dataset
from lplgrad.models.loss_module import LossPredictionModule
from lplgrad.models.model_file import Architecture, main_model


def model_stem(config: RunConfig, height: int) -> str:
    """ResNet-18's stem: ``model.stem``, or for "auto" the CIFAR stem up to 64 px and the ImageNet one above."""
    return config.model.stem if config.model.stem != "auto" else ("cifar" if height <= 64 else "imagenet")


def build_models(config: RunConfig, dataset: Dataset, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Seeded w_main and w_aux (its loss prediction module), on ``device``, as the module docstring
    lists; a pretrained backbone's weights (``model.weights``) are loaded under a seeded new classifier."""
    with torch.random.fork_rng(devices=[]):  # seeds the initialization without touching the caller's generator
        torch.manual_seed(seed)
        model = main_model(architecture(config, dataset), config.model.weights)
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
        trunk_map=list(dataset.trunk_map),
        input_size=config.model.input_size,
    )
