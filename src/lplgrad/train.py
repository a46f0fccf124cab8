"""The training phase: w_main and (optionally) w_aux trained jointly on the labeled set.

Total loss (Yoo & Kweon 2019, eq. 3; LPLgrad Sec. III.B):
    L = mean_i CE(w_main(x_i), y_i) + lambda * L_rank(w_aux(features_i), CE_i)
After ``detach_fraction`` of the epochs the features fed to w_aux are detached, so
the ranking loss stops shaping the backbone.
"""

from __future__ import annotations

import logging
import math
import sys

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from lplgrad.config import TrainConfig
from lplgrad.data import Dataset, augment_batch, conv_layout
from lplgrad.losses import loss_prediction_loss
from lplgrad.models.output import split_output

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The training loss, or the weights after training, became NaN or infinite."""

    def __init__(self, epoch: int, what: str = "training loss is not finite at") -> None:
        super().__init__(f"{what} epoch {epoch + 1}; try a lower learning rate (train.lr)")
        self.epoch = epoch
        self.round: int | None = None  # set by the experiment loop


def make_optimizer(
    modules: list[nn.Module], config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD with momentum and weight decay over all modules, and a MultiStepLR at the milestone fractions."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    return optimizer, scheduler


def fit(
    model: nn.Module,
    dataset: Dataset,
    labeled: Tensor,
    config: TrainConfig,
    seed: int,
    aux_model: nn.Module | None = None,
    progress: bool = False,
    description: str = "train",
) -> float:
    """Train ``model`` (w_main, and w_aux ``aux_model`` when given) on ``dataset.train[labeled]``.

    ``seed`` fixes the data order and augmentation; with ``progress``, a tqdm bar named
    ``description`` shows the epochs on a terminal. Returns the mean total loss of the last
    epoch. Raises TrainingDiverged on a NaN/inf loss, or weights that are not finite or too
    large after training.
    """
    device = next(model.parameters()).device
    order_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    labeled = labeled.to(device)
    images, labels = dataset.train.images, dataset.train.labels
    modules = [m for m in (model, aux_model) if m is not None]
    optimizer, scheduler = make_optimizer(modules, config)
    detach_epoch = round(config.detach_fraction * config.epochs)
    for module in modules:
        module.train()

    mean_loss = 0.0
    show = progress and sys.stderr.isatty()
    for epoch in tqdm(range(config.epochs), desc=description, disable=not show, leave=False):
        order = labeled[torch.randperm(labeled.numel(), generator=order_generator).to(device)]
        total, seen = torch.zeros((), device=device), 0
        for start in range(0, order.numel(), config.batch_size):
            batch = order[start : start + config.batch_size]
            if batch.numel() == 1:
                # A last batch of one image: BatchNorm cannot take batch statistics of one sample on small
                # feature maps, and the ranking loss has no pair. Skipped; the next epoch reshuffles.
                continue
            x = dataset.normalize(augment_batch(images[batch], dataset.augment, augment_generator))
            x = conv_layout(x, config.channels_last)
            y = labels[batch]
            logits, features = split_output(model(x))
            per_sample = F.cross_entropy(logits, y, reduction="none")
            loss = per_sample.mean()
            if aux_model is not None:
                if features is None:
                    raise ValueError("training with w_aux needs a model that returns feature maps")
                if epoch >= detach_epoch:
                    features = [f.detach() for f in features]
                predicted = aux_model(features)
                loss = loss + config.ranking_weight * loss_prediction_loss(predicted, per_sample, config.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * batch.numel()
            seen += batch.numel()
        scheduler.step()
        mean_loss = float(total) / max(1, seen)  # one sync per epoch, also the NaN check
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(epoch)
    if not weights_healthy(modules):  # the loss is measured before each step, so the last step is checked here
        raise TrainingDiverged(config.epochs - 1, f"weights are not finite or exceed {WEIGHT_LIMIT:g} after")
    return mean_loss


# No weight of a ResNet trained with weight decay comes near this (they stay within about 10);
# a step with a learning rate of 1e9 lands at 5e9. Past it, a round is recorded as diverged.
WEIGHT_LIMIT = 1e6


def weights_healthy(modules: list[nn.Module]) -> bool:
    """Every parameter finite and within WEIGHT_LIMIT, and every buffer finite; one host sync."""
    checks = [p.abs().max() <= WEIGHT_LIMIT for m in modules for p in m.parameters()]  # False for NaN
    checks += [torch.isfinite(b).all() for m in modules for b in m.buffers() if b.is_floating_point()]
    return bool(torch.stack(checks).all())
