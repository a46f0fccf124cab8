"""Datasets as uint8 image tensors + integer labels, and batched augmentation on the device.

Images stay uint8 [N, C, H, W] (4x smaller than float) on the training device;
a batch is gathered by index, augmented (random crop with zero padding, random
horizontal flip) and normalized in a handful of tensor ops, with no per-image
Python work, following airbench's data handling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """One split: images uint8 [N, C, H, W] and labels int64 [N] on the same device."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] matching the images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding of ``crop_padding`` pixels, optional flip."""

    crop_padding: int = 4
    flip: bool = True


@dataclass(frozen=True)
class Dataset:
    """A train and a test split with class names, per-channel mean/std (of [0, 1] pixels) and augmentation."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    skipped_files: tuple[str, ...] = ()  # files of an image folder that could not be decoded

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 [B, C, H, W] -> float32 normalized with the dataset's mean/std."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std


def conv_layout(batch: Tensor) -> Tensor:
    """A [B, C, H, W] batch in the memory layout the device's convolutions run fastest on.

    On the CPU that is channels_last: with oneDNN a ResNet-18 training step took 0.67-0.98x
    the NCHW time and an eval forward 0.85-1.03x (bench/layout.py on 2 cores, widths 16 and
    64, batches 64-512; narrow nets and large batches gain most). On GPUs the batch is left
    as it is until that has been measured there. The gradient-norm engine keeps NCHW: its
    per-layer rules would have to copy channels_last tensors back.
    """
    if batch.device.type == "cpu" and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], computed in chunks to bound memory."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def augment_batch(images: Tensor, augment: Augment, generator: torch.Generator) -> Tensor:
    """Random crop (with zero padding) and random horizontal flip of a uint8 batch [B, C, H, W].

    Every image gets its own offsets and flip, all drawn from ``generator`` (on
    the images' device) and applied in one gather, so the cost does not grow
    with Python work per image.
    """
    batch, _, height, width = images.shape
    device = images.device
    pad = augment.crop_padding
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = (torch.arange(height, device=device)[None, :] + dy[:, None])[:, :, None]  # [B, H, 1]
        cols = (torch.arange(width, device=device)[None, :] + dx[:, None])[:, None, :]  # [B, 1, W]
        batch_index = torch.arange(batch, device=device)[:, None, None]
        # Advanced indexing on dims 0, 2, 3 puts the channel dim last: [B, H, W, C].
        images = padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)
    if augment.flip:
        flip = torch.rand(batch, device=device, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images.contiguous()
