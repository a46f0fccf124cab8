"""A labeling round in head mode: the default project (a frozen EfficientNet-Lite0, a linear head on
its cached features, BADGE) on generated images, timed in one run.

Prints: the feature extraction's throughput inside the project (decoding overlapped, written a chunk
at a time) against the backbone's forward-only throughput on images already in memory, and the
time of a trained round (head on the labels, every unlabeled image scored, the batch written) once
the features are cached. Goals (issue 24): extraction >= 0.8x forward-only; a round <= 10 s.

    python bench/head_round.py --images 5000 --labeled 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lplgrad.models.backbones import create_pretrained
from lplgrad.project import workflow
from lplgrad.project.query import query
from lplgrad.train.features import pooled_features

CLASSES = ["red", "green", "blue", "dark", "light"]


def make_pool(root: Path, count: int) -> dict[str, str]:
    """Noisy 48x48 PNGs whose colour depends on the class; relative path -> class."""
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        pixels = rng.integers(0, 90, (48, 48, 3)).astype(np.uint8)
        if i % 5 < 3:
            pixels[..., i % 5] += 140
        else:
            pixels += 0 if i % 5 == 3 else 160
        relative = f"{i // 1000:02d}/{i:05d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / relative)
        truth[relative] = label
    return truth


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--labeled", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        truth = make_pool(folder / "pool", args.images)
        project = folder / "project"
        workflow.init(project, folder / "pool", CLASSES, settings={"device": "cpu"})
        labels = list(truth.items())[: args.labeled]
        (folder / "labels.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in labels))
        workflow.import_labels(project, [folder / "labels.csv"])

        backbone, spec = create_pretrained("efficientnet-lite0", len(CLASSES), "default")
        sample = torch.randint(0, 256, (256, 3, spec.image_size, spec.image_size), dtype=torch.uint8)
        pooled_features(backbone, spec, sample[:16])  # warm-up
        start = time.perf_counter()
        pooled_features(backbone, spec, sample)
        forward_rate = len(sample) / (time.perf_counter() - start)

        start = time.perf_counter()
        query(project, k=args.k)  # computes and stores every image's features, then a round
        first = time.perf_counter() - start
        start = time.perf_counter()
        result = query(project, k=args.k)  # features cached: the round alone
        cached = time.perf_counter() - start
        project_rate = args.images / max(first - cached, 1e-9)
        print(f"forward only, images in memory: {forward_rate:.1f} images/s")
        print(
            f"in the project (decode overlapped, stored): {project_rate:.1f} images/s "
            f"= {project_rate / forward_rate:.2f}x forward-only (goal >= 0.8x)"
        )
        print(
            f"a round with cached features ({result.labeled} labels, every unlabeled image not in a batch "
            f"scored, k={args.k}, badge): {cached:.1f} s (goal <= 10 s)"
        )


if __name__ == "__main__":
    main()
