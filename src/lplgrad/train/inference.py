"""Batched no-grad forward passes over a split, with the model's train/eval mode restored afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lplgrad.data import Dataset
from lplgrad.models.output import penultimate, split_output
from lplgrad.runtime.distributed import gather, shard, sum_over_ranks, world


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


def predict_all(
    model: nn.Module,
    dataset: Dataset,
    indices: Tensor,
    batch_size: int = 512,
    aux_model: nn.Module | None = None,
    embeddings: bool = False,
) -> dict[str, Tensor]:
    """``predict`` on training images, for strategies that need every image's outputs at once
    (features to cluster or cover): under torchrun each process predicts its shard of ``indices``
    and every process receives all of them, in ``indices`` order."""
    if world()[1] == 1 or indices.numel() < world()[1]:
        return predict(model, dataset, indices, batch_size, aux_model=aux_model, embeddings=embeddings)
    mine = predict(
        model, dataset, indices[shard(indices.numel())], batch_size, aux_model=aux_model, embeddings=embeddings
    )
    return {key: gather(value) for key, value in sorted(mine.items())}  # the same order on every rank


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, list[float | None]]:
    """Test accuracy (fraction) and per-class accuracy (None for a class absent from the test set).
    Under torchrun each process counts its shard of the test set and the counts are summed."""
    test = dataset.test
    mine = torch.arange(len(test))[shard(len(test))]
    labels = test.labels[mine.to(test.labels.device)]
    logits = predict(model, dataset, mine, batch_size, split="test")["logits"] if mine.numel() else None
    correct = (logits.argmax(1) == labels).float() if logits is not None else torch.zeros(0, device=labels.device)
    counts = torch.stack(
        [
            torch.bincount(labels, minlength=dataset.num_classes).float(),
            torch.bincount(labels, weights=correct, minlength=dataset.num_classes).float(),
        ]
    )
    per_class_total, per_class_correct = sum_over_ranks(counts)
    ratios = (per_class_correct / per_class_total).tolist()  # 0/0 -> nan for absent classes
    return float(per_class_correct.sum() / per_class_total.sum()), [None if math.isnan(r) else r for r in ratios]
