"""Batched training augmentation on the device (random crop with zero padding, random flip), and
the memory layout of batches for the convolutions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding of ``crop_padding`` pixels, optional flip."""

    crop_padding: int = 4
    flip: bool = True


def conv_layout(batch: Tensor, channels_last: bool) -> Tensor:
    """A [B, C, H, W] batch in NCHW, or in channels_last when asked (``train.channels_last``).

    NCHW (as ``Dataset.normalize`` returns it) is the default because it is bit-reproducible on
    every CPU: oneDNN's channels_last
    weight gradient of a 1x1 stride-2 convolution with 4 input channels (the shortcut of a
    width-4 ResNet-18) reads memory it should not on AVX2 CPUs, so two identical steps give
    different gradients, and on some inputs crash or hang (scripts/onednn_channels_last_repro.py).
    channels_last is opt-in for speed where it has been measured (bench/layout.py).
    """
    if channels_last and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


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
