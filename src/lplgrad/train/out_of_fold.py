"""Out-of-sample predicted probabilities of labeled images, by k-fold training.

For each of ``folds`` stratified folds a fresh w_main is trained (as a round trains it) on the other
folds and predicts the held-out one, so every labeled image gets probabilities from a model that
never saw its label: what confident learning needs (Northcutt et al. 2021, sec. 2, "out-of-sample
predicted probabilities"). With a head on cached features (``train.finetune = head``) each fold
trains in about a second; with a network from scratch it takes ``folds`` rounds' training.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import Tensor

from lplgrad.config.schema import RunConfig
from lplgrad.core.seeds import SEED_FOLDS, SEED_INIT, SEED_TRAIN, derive_seed
from lplgrad.data import Dataset
from lplgrad.errors import UserError
from lplgrad.models.build import build_models
from lplgrad.train.fit import fit
from lplgrad.train.inference import predict


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) positions of each fold, stratified by label (scikit-learn's StratifiedKFold);
    a class with fewer images than folds is spread over as many folds as it has images (it needs at
    least one class with ``folds`` images)."""
    if labels.size < 2 * folds:
        raise UserError(f"--folds {folds} needs at least {2 * folds} labeled images, there are {labels.size}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=derive_seed(seed, 0, SEED_FOLDS) % 2**32)

    with warnings.catch_warnings():  # "the least populated class has only N members": handled as said
        warnings.simplefilter("ignore", UserWarning)
        try:
            return list(splitter.split(np.zeros(labels.size), labels))
        except ValueError:  # every class has fewer images than folds
            largest = int(np.bincount(labels).max())
            raise UserError(
                f"--folds {folds} is more than the {largest} images of the largest class; lower --folds"
            ) from None


def out_of_fold_probabilities(
    config: RunConfig, dataset: Dataset, labeled: Tensor, folds: int, seed: int, device: torch.device
) -> Tensor:
    """softmax probabilities [len(labeled), C] of ``dataset.train[labeled]``, each from the fold model
    that did not train on it (module docstring). ``dataset.train.labels`` holds the given labels."""
    labels = dataset.train.labels[labeled.to(dataset.train.labels.device)].cpu().numpy()
    out = torch.zeros(labeled.numel(), dataset.num_classes)
    for fold, (train_at, held_at) in enumerate(fold_assignment(labels, folds, seed)):
        model, _ = build_models(config, dataset, derive_seed(seed, fold, SEED_INIT), device)
        fit(model, dataset, labeled[torch.from_numpy(train_at)], config.train, derive_seed(seed, fold, SEED_TRAIN))
        held = labeled[torch.from_numpy(held_at)]
        logits = predict(model, dataset, held, config.train.eval_batch_size)["logits"]
        out[torch.from_numpy(held_at)] = torch.softmax(logits.float(), dim=1).cpu()
    return out
