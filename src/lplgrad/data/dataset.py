"""A dataset as uint8 image tensors + integer labels, on the training device.

Images stay uint8 [N, C, H, W] (4x smaller than float); a batch is gathered by index,
augmented on the device (``augment.py``) and normalized here, with no per-image Python
work, following airbench's data handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from lplgrad.data.augment import Augment


@dataclass(frozen=True)
class Split:
    """One split: images uint8 [N, C, H, W] and labels int64 [N] on the same device."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        features = self.images.dtype == torch.float16 and self.images.shape[2:] == (1, 1)  # train.finetune = head
        if not (self.images.dtype == torch.uint8 or features) or self.images.dim() != 4:
            raise ValueError(
                "images must be uint8 [N, C, H, W] or float16 features [N, D, 1, 1], "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be [N] matching the images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


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
    train_files: tuple[str, ...] = ()  # an image folder's training files (relative to it), one per train row
    # Non-empty when the "images" are rows cached from a frozen backbone [N, D, 1, 1] (train.finetune
    # = head: its four levels pooled, D = sum(C_k); last: see trunk_map): the channels of its four levels.
    feature_channels: tuple[int, ...] = ()
    # Non-empty when each row is instead a frozen trunk's output (train.finetune = last): the first
    # three levels pooled, then the last stage's input map of this (C, h, w), flattened.
    trunk_map: tuple[int, ...] = ()
    _mean: Tensor = field(init=False, repr=False, compare=False)  # [1, C, 1, 1] on the data's device
    _std: Tensor = field(init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def __post_init__(self) -> None:
        # Built once here rather than per batch.
        device = self.train.images.device
        object.__setattr__(self, "_mean", torch.tensor(self.mean, device=device).view(1, -1, 1, 1))
        object.__setattr__(self, "_std", torch.tensor(self.std, device=device).view(1, -1, 1, 1))

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 [B, C, H, W] -> float32 normalized with the dataset's mean/std, in plain NCHW strides.

        The explicit memory format matters for one-channel images: a [B, 1, H, W] batch whose
        strides are also channels_last (as batched augmentation leaves it) counts as contiguous,
        so ``.contiguous()`` keeps it, and convolutions would then pick channels_last kernels.
        """
        x = images.to(torch.float32, memory_format=torch.contiguous_format)
        if images.dtype != torch.uint8:  # a frozen backbone's cached features: already what the head reads
            return x
        return self.standardize(x / 255.0)

    def standardize(self, x: Tensor) -> Tensor:
        """Float pixels in [0, 1] (e.g. SimCLR's views) -> standardized with the dataset's mean/std."""
        return (x - self._mean.to(x.device)) / self._std.to(x.device)


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


def dataset_of(
    name: str,
    train: Split,
    test: Split,
    classes: list[str],
    flip: bool = True,
    stats_of: Tensor | None = None,
    train_files: tuple[str, ...] = (),
    skipped_files: tuple[str, ...] = (),
    feature_channels: tuple[int, ...] = (),
) -> Dataset:
    """A Dataset as every loader, a labeling round and ``lplgrad embed`` build one: normalised by the
    per-channel mean/std of ``stats_of`` (default: the training images; a project passes its labeled
    ones, since its other training rows are candidates), augmented by a random crop with padding
    size / 8 (at least 1) and, with ``flip``, a horizontal flip. With ``feature_channels`` the
    "images" are a frozen backbone's pooled features: neither normalised nor augmented."""
    if feature_channels:
        none = Augment(crop_padding=0, flip=False)
        return Dataset(name, train, test, classes, (0.0,), (1.0,), none, skipped_files, train_files, feature_channels)
    mean, std = channel_stats(train.images if stats_of is None else stats_of)
    size = train.images.shape[-1]
    augment = Augment(crop_padding=max(1, size // 8), flip=flip)
    return Dataset(name, train, test, classes, mean, std, augment, skipped_files, train_files)
