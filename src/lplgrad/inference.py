"""Batched no-grad forward passes over a split, with the model's train/eval mode restored afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lplgrad.data import Dataset
from lplgrad.models.output import penultimate, split_output


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode (BatchNorm uses running statistics) and restore each one's mode."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    try:
        for module in present:
            module.eval()
        yield
    finally:
        for module, mode in zip(present, modes, strict=True):
            module.train(mode)


def batches(images: Tensor, indices: Tensor, dataset: Dataset, batch_size: int) -> Iterator[Tensor]:
    """Normalized float batches of ``images[indices]`` in order, on the images' device."""
    indices = indices.to(images.device)
    for start in range(0, indices.numel(), batch_size):
        yield dataset.normalize(images[indices[start : start + batch_size]])


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    indices: Tensor,
    batch_size: int = 512,
    split: str = "train",
    aux_model: nn.Module | None = None,
    embeddings: bool = False,
) -> dict[str, Tensor]:
    """Logits [N, C] of ``split`` images at ``indices`` (plus, on request, w_aux's predicted
    loss [N] and penultimate embeddings [N, D]), in eval mode, no augmentation."""
    images = getattr(dataset, split).images
    out: dict[str, list[Tensor]] = {"logits": [], "predicted_loss": [], "embeddings": []}
    with eval_mode(model, aux_model):
        for x in batches(images, indices, dataset, batch_size):
            logits, features = split_output(model(x))
            out["logits"].append(logits.float())
            if aux_model is not None or embeddings:
                if features is None:
                    raise ValueError("this needs a model that returns (logits, feature maps)")
                if aux_model is not None:
                    out["predicted_loss"].append(aux_model(features).float())
                if embeddings:
                    out["embeddings"].append(penultimate(features).float())
    return {k: torch.cat(v) for k, v in out.items() if v}


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, list[float | None]]:
    """Test accuracy (fraction) and per-class accuracy (None for a class absent from the test set)."""
    test = dataset.test
    logits = predict(model, dataset, torch.arange(len(test)), batch_size, split="test")["logits"]
    correct = (logits.argmax(1) == test.labels).float()
    per_class_total = torch.bincount(test.labels, minlength=dataset.num_classes).float()
    per_class_correct = torch.bincount(test.labels, weights=correct, minlength=dataset.num_classes)
    ratios = (per_class_correct / per_class_total).tolist()  # 0/0 -> nan for absent classes
    return float(correct.mean()), [None if math.isnan(r) else r for r in ratios]
