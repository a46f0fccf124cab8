"""Per-round artifacts for the report's figures (``--save-artifacts``), bounded in size.

At the first, middle and last round of each (strategy, trial): penultimate features of a
fixed random subsample of the test set (for t-SNE, the paper's Fig. 6) with labels and
predictions, and the max-softmax confidence of up to ``MAX_POINTS`` labeled and unlabeled
training images (Fig. 7). float16 features of at most 1,000 test images keep a file near
1 MB for a full-width ResNet-18.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lplgrad.data import Dataset
from lplgrad.runtime.atomic_io import save_atomic
from lplgrad.train.inference import predict

ARTIFACT_DIR = "artifacts"
TEST_POINTS = 1000
MAX_POINTS = 5000


def artifact_rounds(num_rounds: int) -> set[int]:
    return {0, num_rounds // 2, num_rounds - 1}


def artifact_path(out_dir: Path, strategy: str, trial: int, round_index: int) -> Path:
    return out_dir / ARTIFACT_DIR / f"{strategy}-trial{trial}-round{round_index}.pt"


def _sample(indices: Tensor, count: int, seed: int) -> Tensor:
    order = torch.randperm(indices.numel(), generator=torch.Generator().manual_seed(seed))[:count]
    return indices[order].sort().values


def collect(
    model: nn.Module, dataset: Dataset, labeled: Tensor, unlabeled: Tensor, seed: int, batch_size: int = 512
) -> dict[str, Any]:
    """Features of a seeded test subsample (the same images for every method of a run) and confidences."""
    test_idx = _sample(torch.arange(len(dataset.test)), TEST_POINTS, seed)
    test = predict(model, dataset, test_idx, batch_size, split="test", embeddings=True)
    confidence = {}
    for name, indices in (("labeled", labeled), ("unlabeled", unlabeled)):
        chosen = _sample(indices.cpu(), MAX_POINTS, seed + 1)
        logits = predict(model, dataset, chosen, batch_size)["logits"] if chosen.numel() else torch.empty(0, 1)
        confidence[name] = torch.softmax(logits, dim=1).max(dim=1).values.half().cpu()
    return {
        "test_index": test_idx,
        "test_features": test["embeddings"].half().cpu(),
        "test_labels": dataset.test.labels[test_idx.to(dataset.test.labels.device)].cpu(),
        "test_predictions": test["logits"].argmax(1).cpu(),
        "confidence_labeled": confidence["labeled"],
        "confidence_unlabeled": confidence["unlabeled"],
    }


def save(out_dir: Path, strategy: str, trial: int, round_index: int, artifacts: dict[str, Any]) -> None:
    save_atomic(artifact_path(out_dir, strategy, trial, round_index), artifacts)


def load_all(out_dir: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    """{(strategy, trial, round): artifacts} of a run folder."""
    found = {}
    for path in sorted((out_dir / ARTIFACT_DIR).glob("*-trial*-round*.pt")):
        stem, _, round_part = path.stem.rpartition("-round")
        strategy, _, trial_part = stem.rpartition("-trial")
        found[(strategy, int(trial_part), int(round_part))] = torch.load(path, weights_only=True)
    return found
