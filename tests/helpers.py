"""Helpers shared by the tests: a tiny synthetic dataset, so the suite runs in seconds on a CPU."""

from __future__ import annotations

import torch

from lplgrad.data import Augment, Dataset, Split


def make_dataset(num_train: int = 64, num_test: int = 32, classes: int = 4, size: int = 8, seed: int = 0) -> Dataset:
    """Class-dependent mean brightness + noise, so a model can learn something."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.arange(n) % classes
        base = (labels.float() * (200 / classes) + 20).view(n, 1, 1, 1)
        noise = torch.randn(n, 3, size, size, generator=generator) * 20
        return Split((base + noise).clamp(0, 255).to(torch.uint8), labels)

    return Dataset(
        "synthetic",
        split(num_train),
        split(num_test),
        [f"c{i}" for i in range(classes)],
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        Augment(crop_padding=1, flip=True),
    )
