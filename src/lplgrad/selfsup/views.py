"""SimCLR's random views of a uint8 batch, drawn per image and applied to the whole batch at once.

Chen et al. 2020 (Appendix A) for CIFAR-10: random resized crop (area 8-100% in the paper; 20-100%
here, as TypiClust's SimCLR uses for 32-px images), horizontal flip, colour jitter (brightness,
contrast, saturation 0.4, applied with probability 0.8) and grayscale with probability 0.2.
Hue jitter is left out: it needs an RGB <-> HSV round trip per pixel and is the weakest of the
four jitters in the paper's ablation.

The crop, resize and flip are one affine ``grid_sample`` with a per-image matrix; the jitters are
per-image factors broadcast over the batch, so there is no Python work per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ViewSettings:
    """The strength of each random transformation."""

    min_area: float = 0.2
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.4
    jitter_probability: float = 0.8
    gray_probability: float = 0.2


def _uniform(low: float, high: float, size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


def crop_matrices(batch: int, settings: ViewSettings, generator: torch.Generator, device: torch.device) -> Tensor:
    """[B, 2, 3] affine matrices of ``affine_grid``: a random crop of area a (of the image) and aspect
    ratio r, at a random place inside the image, flipped horizontally with probability 0.5."""
    area = _uniform(settings.min_area, 1.0, batch, generator, device)
    log_ratio = _uniform(math.log(settings.ratio[0]), math.log(settings.ratio[1]), batch, generator, device)
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # fractions of the image side
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (1 - width) * _uniform(-1.0, 1.0, batch, generator, device)  # the crop stays inside
    centre_y = (1 - height) * _uniform(-1.0, 1.0, batch, generator, device)
    flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    matrices = torch.zeros(batch, 2, 3, device=device)
    matrices[:, 0, 0] = width * flip
    matrices[:, 0, 2] = centre_x
    matrices[:, 1, 1] = height
    matrices[:, 1, 2] = centre_y
    return matrices


def grayscale(images: Tensor) -> Tensor:
    """[B, 1, H, W] luma of float RGB images [B, 3, H, W]."""
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def color_jitter(images: Tensor, settings: ViewSettings, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] per image (1 for the images
    the probability skips), as torchvision's adjust_* functions define them, on [0, 1] floats."""
    batch, channels = images.shape[:2]
    device = images.device
    applied = torch.rand(batch, generator=generator, device=device) < settings.jitter_probability

    def factors() -> Tensor:
        drawn = _uniform(1 - settings.jitter, 1 + settings.jitter, batch, generator, device)
        return torch.where(applied, drawn, 1.0).view(batch, 1, 1, 1)

    images = (images * factors()).clamp(0, 1)  # brightness
    gray = grayscale(images) if channels == 3 else images
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * factors() + mean).clamp(0, 1)  # contrast: towards the mean gray
    if channels == 3:
        gray = grayscale(images)
        images = ((images - gray) * factors() + gray).clamp(0, 1)  # saturation: towards the pixel's gray
    return images


def random_views(images: Tensor, settings: ViewSettings, generator: torch.Generator) -> Tensor:
    """One random view per image of a uint8 batch [B, C, H, W]: float [0, 1] of the same size."""
    batch, channels, height, width = images.shape
    x = images.float() / 255.0
    grid = F.affine_grid(crop_matrices(batch, settings, generator, x.device), [batch, channels, height, width], False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = color_jitter(x, settings, generator)
    if channels == 3:
        gray = torch.rand(batch, generator=generator, device=x.device) < settings.gray_probability
        x = torch.where(gray.view(batch, 1, 1, 1), grayscale(x).expand_as(x), x)
    return x.contiguous()
