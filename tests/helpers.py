"""Helpers shared by the tests: a tiny synthetic dataset and generated image folders, so the suite
runs in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

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


CLASSES = ["red", "green", "blue"]
TINY = ["--set", "train.epochs=2", "--set", "model.width=4", "--set", "train.min_steps=0", "--set", "device=cpu"]


def make_images(root: Path, count: int, seed: int = 0, folders: bool = False) -> dict[str, str]:
    """Class-coloured 12x12 PNGs; returns relative path -> true class."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        label = CLASSES[i % 3]
        pixels = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
        pixels[..., i % 3] += 150
        relative = f"{label}/{i:03d}.png" if folders else f"{'sub/' if i % 2 else ''}{i:03d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / relative)
        truth[relative] = label
    return truth


def write_images(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> None:
    """Random-pixel PNGs in class folders: ``classes`` maps a class name to its image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def shape_images(root: Path, count: int, seed: int, folders: bool = False) -> dict[str, str]:
    """64-px pictures of four random ellipses and rectangles on a random background: to a pretrained
    backbone mostly different pictures, unlike the class-coloured noise of ``make_images``."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        label = CLASSES[i % 3]
        image = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y, w, h = (int(v) for v in rng.integers([0, 0, 8, 8], [48, 48, 32, 32]))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
        relative = f"{label}/{i:03d}.png" if folders else f"{i:03d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative)
        truth[relative] = label
    return truth
