"""How many of ``lplgrad review``'s flags are right: flip a known fraction of labels and count.

A known-labels benchmark for the label-error scores (``quality.label_errors``) with the same
out-of-sample k-fold training as ``lplgrad review`` (``train.out_of_fold``): ``--labeled`` random
training images get their true label, ``--flip`` of them a wrong one (uniform over the other
classes); the flags are then compared with the flips. Printed per trial and as a mean: how many
were flagged, precision (flags that were flips), recall (flips that were flagged), and precision
of the top-n ranking (n = the number of flips) against the flip rate a random ranking would get.

    python experiments/label_errors.py --dataset imagefolder:/tmp/c10sub --labeled 1000 --flip 0.1 \\
        --set model.backbone=efficientnet-lite0 --set train.finetune=head --set data.cache_dir=/tmp/featcache
    python experiments/label_errors.py --dataset digits --labeled 500 --flip 0.1 --set train.epochs=30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lplgrad.config.files import parse_set
from lplgrad.config.schema import resolve
from lplgrad.data import Split
from lplgrad.data.dataset import dataset_of
from lplgrad.data.imagefolder import default_cache_dir
from lplgrad.data.loaders import load_dataset
from lplgrad.experiment.runner import resolve_device
from lplgrad.quality.label_errors import find_label_issues
from lplgrad.train.features import cached_features_dataset
from lplgrad.train.out_of_fold import out_of_fold_probabilities


def flipped_labels(labels: torch.Tensor, fraction: float, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, mask of the flipped ones): ``fraction`` of them moved to another class."""
    generator = torch.Generator().manual_seed(seed)
    flipped = torch.zeros(labels.numel(), dtype=torch.bool)
    flipped[torch.randperm(labels.numel(), generator=generator)[: round(fraction * labels.numel())]] = True
    shift = torch.randint(1, classes, (labels.numel(),), generator=generator)
    return torch.where(flipped, (labels + shift) % classes, labels), flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--labeled", type=int, default=500)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = resolve({"data.name": args.dataset, "device": "cpu", **parse_set(args.set)})
    device = resolve_device(config.device)
    dataset = load_dataset(config.data)
    if config.train.finetune == "head":
        cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
        dataset = cached_features_dataset(dataset, config.model.backbone, config.model.weights, cache)
    results = []
    for trial in range(args.trials):
        chosen = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(trial))[: args.labeled]
        truth = dataset.train.labels[chosen].cpu()
        noisy, flipped = flipped_labels(truth, args.flip, dataset.num_classes, 1000 + trial)
        images = dataset.train.images[chosen]
        noisy_set = dataset_of(
            dataset.name,
            Split(images, noisy),
            dataset.test,
            dataset.classes,
            feature_channels=dataset.feature_channels,
        )
        start = time.perf_counter()
        probabilities = out_of_fold_probabilities(
            config, noisy_set.to(device), torch.arange(args.labeled), args.folds, trial, device
        )
        seconds = time.perf_counter() - start
        issues = find_label_issues(probabilities, noisy)
        flags = issues.flagged
        top = torch.zeros_like(flags)
        top[issues.order[: int(flipped.sum())]] = True
        row = {
            "flagged": int(flags.sum()),
            "precision": float((flags & flipped).sum() / max(1, int(flags.sum()))),
            "recall": float((flags & flipped).sum() / flipped.sum()),
            "top_n_precision": float((top & flipped).sum() / flipped.sum()),
            "seconds": seconds,
        }
        results.append(row)
        print(
            f"trial {trial}: {int(flipped.sum())} of {args.labeled} labels flipped; {row['flagged']} flagged, "
            f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, top-{int(flipped.sum())} precision "
            f"{row['top_n_precision']:.3f} (random ranking: {args.flip:.3f}); {args.folds} folds in {seconds:.1f} s"
        )
    mean = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
    print(
        f"mean over {args.trials} trials: {mean['flagged']:.1f} flagged, precision {mean['precision']:.3f}, "
        f"recall {mean['recall']:.3f}, top-n precision {mean['top_n_precision']:.3f}, {mean['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
