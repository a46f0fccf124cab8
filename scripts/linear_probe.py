"""Are a pretrained backbone's features good? A linear head on them, trained with lplgrad's own head
path (``train.features`` -> ``models.head.FeatureHead`` -> ``train.fit``), on a random labeled subset
of an image folder, against the same number of labels from scratch (ResNet-18 with the image-folder
training defaults).

    python scripts/linear_probe.py /tmp/cifar --per-class 10 100 --test-per-class 100
"""

from __future__ import annotations

import argparse
import time

import torch

from lplgrad.config.schema import resolve
from lplgrad.data import Split
from lplgrad.data.loaders import load_dataset
from lplgrad.models.backbones import create_pretrained
from lplgrad.models.build import build_models
from lplgrad.train.features import features_dataset
from lplgrad.train.fit import fit
from lplgrad.train.inference import evaluate


def subset(split: Split, per_class: int, seed: int) -> torch.Tensor:
    """``per_class`` random indices of each class."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in split.labels.unique().tolist():
        where = torch.nonzero(split.labels == c).flatten()
        picks.append(where[torch.randperm(where.numel(), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--scratch-epochs", type=int, default=30)
    args = parser.parse_args()
    data = load_dataset(resolve({"data.name": f"imagefolder:{args.folder}"}).data)
    pool = subset(data.train, max(args.per_class), 0)
    test = subset(data.test, args.test_per_class, 1)
    small = type(data)(
        **{
            **{f: getattr(data, f) for f in ("name", "classes", "mean", "std", "augment")},
            "train": Split(data.train.images[pool], data.train.labels[pool]),
            "test": Split(data.test.images[test], data.test.labels[test]),
        }
    )
    start = time.perf_counter()
    backbone, spec = create_pretrained(args.backbone, small.num_classes, "default")
    features = features_dataset(small, backbone, spec)
    seconds = time.perf_counter() - start
    images = len(small.train) + len(small.test)
    print(f"{spec.name} features of {images} images: {seconds:.0f} s ({images / seconds:.1f} images/s)")
    head_config = resolve(
        {"data.name": f"imagefolder:{args.folder}", "model.backbone": args.backbone, "train.finetune": "head"}
    )
    scratch_config = resolve(
        {"data.name": f"imagefolder:{args.folder}", "model.width": 16, "train.epochs": args.scratch_epochs}
    )
    for per_class in args.per_class:
        labeled = subset(small.train, per_class, 2)
        row = [f"{per_class} labels per class ({labeled.numel()}):"]
        for what, config, dataset in (("head", head_config, features), ("scratch", scratch_config, small)):
            model, _ = build_models(config, dataset, 0, torch.device("cpu"))
            start = time.perf_counter()
            fit(model, dataset, labeled, config.train, 0)
            accuracy = evaluate(model, dataset)[0]
            row.append(f"{what} {100 * accuracy:.1f}% ({time.perf_counter() - start:.0f} s)")
        print(" ".join(row))


if __name__ == "__main__":
    main()
