"""Batched no-grad forward passes over a split, with the model's train/eval mode restored afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lplgrad.data import Dataset
from lplgrad.models.output import penultimate, split_output
from lplgrad.runtime.distributed import gather, shard, world


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


@dataclass(frozen=True)
class Evaluation:
    """A model on the test split: accuracy, per class, and the logits behind them (for calibration)."""

    accuracy: float  # fraction
    per_class: list[float | None]  # None for a class absent from the test set
    correct: int
    total: int
    logits: Tensor  # [N, C] of every test image, in test order (gathered from all ranks)
    labels: Tensor  # [N]


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> Evaluation:
    """Test accuracy and per-class accuracy. Under torchrun each process predicts its shard of the
    test set and every process receives all the logits, so each computes the same numbers."""
    test = dataset.test
    mine = torch.arange(len(test))[shard(len(test))]
    mine_logits = predict(model, dataset, mine, batch_size, split="test").get("logits")
    if mine_logits is None:  # under torchrun, a rank whose shard of a tiny test set is empty
        mine_logits = torch.zeros(0, dataset.num_classes, device=test.labels.device)
    logits = gather(mine_logits).cpu()
    labels = test.labels.cpu()
    correct = logits.argmax(1) == labels
    per_class_total = torch.bincount(labels, minlength=dataset.num_classes).float()
    per_class_correct = torch.bincount(labels, weights=correct.float(), minlength=dataset.num_classes)
    ratios = (per_class_correct / per_class_total).tolist()  # 0/0 -> nan for absent classes
    return Evaluation(
        float(per_class_correct.sum() / per_class_total.sum()),  # float32, as rows have always held
        [None if math.isnan(r) else r for r in ratios],
        int(correct.sum()),
        int(labels.numel()),
        logits,
        labels,
    )
