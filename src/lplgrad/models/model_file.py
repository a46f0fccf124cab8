"""The one model-file format: what a trained round leaves for predicting, resuming and the page.

``model_state`` / ``models_from_state`` are the pair every user goes through: a labeling project's
``models/round-N.pt`` (written by its oracle, read by ``predict``) and a run's checkpoints (the
weights for a warm start on ``--resume``). A state holds the weights of w_main and w_aux and what is
needed to rebuild them without the config that made them: the classes, the input shape, the
normalisation, ResNet-18's width and stem, and w_aux's hidden size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lplgrad.errors import UserError
from lplgrad.models.backbones import create_pretrained
from lplgrad.models.head import FeatureHead
from lplgrad.models.last_stage import LastStageHead
from lplgrad.models.loss_module import LossPredictionModule
from lplgrad.models.pretrained_input import PretrainedInput
from lplgrad.models.resnet import ResNet18
from lplgrad.runtime.atomic_io import save_atomic

FORMAT = "lplgrad-model/1"


@dataclass(frozen=True)
class Architecture:
    """What rebuilds w_main and w_aux, and what their inputs must look like."""

    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    width: int
    stem: str
    aux_hidden: int
    backbone: str = "resnet18"
    weights: str = "none"
    # non-empty: a frozen backbone's levels are read from a cache (a head; with trunk_map, a last stage)
    feature_channels: list[int] = field(default_factory=list)
    trunk_map: list[int] = field(default_factory=list)  # non-empty: its last stage on the trunk's output
    input_size: int | None = None  # a pretrained backbone's input size (model.input_size; None: its own)


MainModel = FeatureHead | LastStageHead | PretrainedInput | ResNet18
M = TypeVar("M", bound=nn.Module)


def main_model(architecture: Architecture, weights: str) -> MainModel:
    """w_main for ``architecture``, a pretrained backbone's weights read from ``weights`` (``none``
    when a model file's state is loaded over them):

    - ``trunk_map``: the backbone's last stage and classifier on its frozen trunk's cached output;
    - ``feature_channels``: a linear head on its cached pooled features;
    - another backbone than resnet18: the whole pretrained backbone on images, resized to its size;
    - resnet18: ResNet-18 from scratch, at the data's size.
    """
    classes = len(architecture.classes)
    if architecture.trunk_map:
        net, _ = create_pretrained(architecture.backbone, classes, weights, architecture.input_size)
        dropout = getattr(net, "_dropout", nn.Identity())
        trunk_map = tuple(architecture.trunk_map)
        head = LastStageHead(net.last_stage(), net.fc, dropout, architecture.feature_channels, trunk_map)  # type: ignore[operator, arg-type]
        return _fine_tuning_batchnorm(head)
    if architecture.feature_channels:
        return FeatureHead(architecture.feature_channels, classes)
    if architecture.backbone != "resnet18":
        net, spec = create_pretrained(architecture.backbone, classes, weights, architecture.input_size)
        return _fine_tuning_batchnorm(PretrainedInput(net, spec, architecture.mean, architecture.std))
    return ResNet18(classes, architecture.channels, architecture.width, architecture.stem)  # type: ignore[arg-type]


def _fine_tuning_batchnorm(model: M) -> M:
    """BatchNorm layers that train keep running statistics with PyTorch's momentum 0.1. The Lite
    weights come with TensorFlow's 0.01 (a 0.99 decay): after the 60-300 steps of a round their running
    statistics, which every evaluation and query uses, would still be 55-5% ImageNet's."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model


def model_state(model: nn.Module, aux_model: nn.Module, architecture: Architecture) -> dict[str, Any]:
    """Weights and architecture as one dict of tensors and plain values (``torch.load(weights_only=True)``)."""
    return {
        "format": FORMAT,
        "architecture": asdict(architecture),
        "model": model.state_dict(),
        "aux_model": aux_model.state_dict(),
    }


def models_from_state(state: dict[str, Any]) -> tuple[nn.Module, nn.Module, Architecture]:
    """w_main and w_aux rebuilt from ``model_state``'s dict (CPU, eval mode), with their architecture."""
    architecture = Architecture(**state["architecture"])
    model = main_model(architecture, "none")
    aux_model = LossPredictionModule(model.feature_channels, architecture.aux_hidden)
    model.load_state_dict(state["model"])
    aux_model.load_state_dict(state["aux_model"])
    return model.eval(), aux_model.eval(), architecture


def load_weights(model: nn.Module, aux_model: nn.Module, state: dict[str, Any]) -> None:
    """Load ``model_state``'s weights into models already built for the same architecture (a resume)."""
    model.load_state_dict(state["model"])
    aux_model.load_state_dict(state["aux_model"])


def save_models(path: Path, model: nn.Module, aux_model: nn.Module, architecture: Architecture) -> None:
    save_atomic(path, model_state(model, aux_model, architecture))


def load_models(path: Path) -> tuple[nn.Module, nn.Module, Architecture]:
    """A model file (an older project's layout is read through ``config.compat``)."""
    from lplgrad.config.compat import upgrade_model_state

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model file {path} is missing") from None
    except Exception as error:  # torch raises many types for unreadable bytes
        raise UserError(f"model file {path} cannot be read ({type(error).__name__}); it is damaged") from None
    return models_from_state(upgrade_model_state(state))
