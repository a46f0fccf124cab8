"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020) on the unlabeled pool: a ResNet-18 learns
features by telling two random views of the same image apart from the views of the others.

The loss is NT-Xent, the paper's Eq. (1): for a batch of N images, 2N views z (L2-normalised
projections) and sim(u, v) = u.v / tau,

    l(i, j) = -log( exp(sim(z_i, z_j)) / sum_{k != i} exp(sim(z_i, z_k)) ),

averaged over both orders of every positive pair (i, j). That is a cross-entropy over each row
of the similarity matrix with the diagonal removed and the partner as the target, which is how it
is computed here (torch's cross_entropy does the stable log-sum-exp). The features kept are the
backbone's pooled penultimate activations h, not the projection z (the paper's Section 4.2: h is
the better representation).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lplgrad.data import Dataset
from lplgrad.errors import UserError
from lplgrad.models import ResNet18, penultimate
from lplgrad.selfsup.views import ViewSettings, random_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR's training settings; lr follows SimCLR's linear scaling, lr = base_lr * batch / 256."""

    epochs: int = 20
    batch_size: int = 256
    base_lr: float = 0.12  # SGD + momentum + cosine, as lightly's CIFAR-10 benchmarks (0.06 per 128 images)
    weight_decay: float = 5e-4
    temperature: float = 0.5  # the paper's best for CIFAR-10 (Table B.7)
    projection_dim: int = 128
    width: int = 16
    stem: str = "cifar"
    seed: int = 0
    views: ViewSettings = field(default_factory=ViewSettings)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise UserError(f"embed needs epochs >= 1 and batch size >= 2, got {self.epochs} and {self.batch_size}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"the temperature must be a positive number, got {self.temperature}")
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise UserError(f"the base learning rate must be a positive number, got {self.base_lr}")


class SimCLRModel(nn.Module):
    """ResNet-18 backbone (h: the global average pool of its last stage; its one-output linear head
    is never used) and SimCLR's projection head g(h) = W2 relu(W1 h)."""

    def __init__(self, in_channels: int, width: int, stem: str, projection_dim: int) -> None:
        super().__init__()
        self.backbone = ResNet18(1, in_channels, width, stem)  # type: ignore[arg-type]
        features = self.backbone.feature_channels[-1]
        self.projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, projection_dim))

    def features(self, x: Tensor) -> Tensor:
        return penultimate(self.backbone(x).features)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.features(x))


def nt_xent(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """NT-Xent (Eq. 1 above) of the projections of two views [N, P] of the same N images."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # k != i
    n = first.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def train_simclr(dataset: Dataset, config: SimCLRConfig, device: torch.device) -> SimCLRModel:
    """SimCLR on every training image of ``dataset`` (its labels are never read)."""
    images = dataset.train.images.to(device)
    count = images.shape[0]
    if count < 2:
        raise UserError(f"embed needs at least 2 training images, got {count}")
    batch_size = min(config.batch_size, count)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SimCLRModel(dataset.image_shape[0], config.width, config.stem, config.projection_dim).to(device)
    per_epoch = count // batch_size  # the last partial batch is dropped: too few negatives
    lr = config.base_lr * batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * per_epoch)
    generator = torch.Generator(device).manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        start, total = time.perf_counter(), torch.zeros((), device=device)
        order = torch.randperm(count, generator=generator, device=device)
        for step in range(per_epoch):
            batch = images[order[step * batch_size : (step + 1) * batch_size]]
            views = torch.cat([random_views(batch, config.views, generator) for _ in range(2)])
            projections = model(dataset.standardize(views))
            loss = nt_xent(projections[:batch_size], projections[batch_size:], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach()
        mean_loss = float(total) / per_epoch  # one host sync per epoch, also the NaN check
        if not math.isfinite(mean_loss):
            raise UserError(f"the SimCLR loss is not finite in epoch {epoch + 1}; try a smaller --base-lr")
        seconds = time.perf_counter() - start
        log.info("embed epoch %d/%d: NT-Xent %.4f, %.1fs", epoch + 1, config.epochs, mean_loss, seconds)
    return model


@torch.no_grad()
def embed_images(model: SimCLRModel, dataset: Dataset, device: torch.device, batch_size: int = 512) -> Tensor:
    """Features h [N, D] (float32, CPU) of every training image, unaugmented, in the pool's order."""
    model.eval()
    images = dataset.train.images
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        chunks.append(model.features(dataset.normalize(images[start : start + batch_size].to(device))).float().cpu())
    return torch.cat(chunks)
