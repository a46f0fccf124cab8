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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lplgrad.config.schema import TrainConfig
from lplgrad.data import Dataset, augment_batch, conv_layout
from lplgrad.errors import UserError
from lplgrad.models.output import split_output
from lplgrad.runtime.distributed import average_buffers, shard, sum_over_ranks, world
from lplgrad.train.losses import loss_prediction_loss

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The training loss, or the weights after training, became NaN or infinite."""

    def __init__(self, epoch: int, what: str = "training loss is not finite at") -> None:
        super().__init__(f"{what} epoch {epoch + 1}; try a lower learning rate (train.lr)")
        self.epoch = epoch
        self.round: int | None = None  # set by the experiment loop


@dataclass(frozen=True)
class FitResult:
    """What a round's training did: the mean loss of its last epoch, its optimizer steps and epochs."""

    loss: float
    steps: int
    epochs: int


def steps_per_epoch(num_labeled: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: one per batch, a last batch too small to split into shards of
    at least two images (one image in a single process) skipped (see ``fit``)."""
    full, rest = divmod(num_labeled, batch_size)
    return full + (1 if rest >= 2 * world()[1] else 0)


def planned_epochs(config: TrainConfig, num_labeled: int) -> int:
    """``train.epochs``, or more when that is fewer than ``train.min_steps`` optimizer steps: a small
    labeled set gives few steps per epoch, and a model trained for a few dozen steps is barely
    better than chance, which makes every uncertainty score noise."""
    per_epoch = max(1, steps_per_epoch(num_labeled, config.batch_size))
    return max(config.epochs, math.ceil(config.min_steps / per_epoch))


class Schedule:
    """The learning-rate schedule over the epochs actually trained: ``multistep`` (x gamma at the
    milestone fractions, stepped per epoch) or ``cosine`` (from lr to 0 over every step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, epochs: int, per_epoch: int) -> None:
        self.per_step = config.schedule == "cosine"
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if self.per_step:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * per_epoch))
        else:
            milestones = sorted({max(1, round(f * epochs)) for f in config.milestones})
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self) -> None:
        if not self.per_step:
            self.scheduler.step()


def make_optimizer(
    modules: list[nn.Module], config: TrainConfig, epochs: int | None = None, per_epoch: int = 1
) -> tuple[torch.optim.Optimizer, Schedule]:
    """SGD with momentum and weight decay over all modules, and its schedule over ``epochs``."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return optimizer, Schedule(optimizer, config, epochs or config.epochs, per_epoch)


def data_parallel(module: nn.Module, config: TrainConfig) -> nn.Module:
    """``module`` for this process's share of each batch: itself in one process, and under
    torchrun wrapped in DistributedDataParallel (gradients averaged over the processes in the
    backward pass; BatchNorm buffers broadcast from rank 0 on each forward, and averaged over the
    ranks when ``fit`` ends), with its BatchNorm layers made SyncBatchNorm when
    ``train.sync_batchnorm`` asks for batch statistics over the whole batch."""
    if world()[1] == 1:
        return module
    device = next(module.parameters()).device
    if config.sync_batchnorm:
        if device.type != "cuda":
            raise UserError("train.sync_batchnorm needs GPUs (torch's SyncBatchNorm has no CPU kernels); drop it")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # swaps the layers in place
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def fit(
    model: nn.Module,
    dataset: Dataset,
    labeled: Tensor,
    config: TrainConfig,
    seed: int,
    aux_model: nn.Module | None = None,
    progress: bool = False,
    description: str = "train",
    on_epoch: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train ``model`` (w_main, and w_aux ``aux_model`` when given) on ``dataset.train[labeled]``.

    ``seed`` fixes the data order and augmentation; with ``progress``, a tqdm bar named
    ``description`` shows the optimizer steps on a terminal. Returns the mean total loss of the last
    epoch, the optimizer steps and the epochs taken (``train.min_steps`` may add epochs; the
    milestones, the cosine schedule and w_aux's detach point follow the epochs actually
    trained). Raises TrainingDiverged on a NaN/inf loss, or weights that are not finite or too
    large after training.

    Under torchrun every process draws the same global batch (same order, same augmentation)
    and trains on its contiguous shard of it (``data_parallel``). Each shard's mean loss is
    weighted by its share of the batch times the number of processes, so the averaged gradient
    is the one process's gradient of the whole batch even when shards differ in size. w_aux's
    ranking pairs are formed inside each shard (see the README).
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # Module randomness (the dropout before a pretrained classifier) is seeded too, and the
        # caller's generator is left as it was.
        torch.manual_seed(seed)
        return _fit(model, dataset, labeled, config, seed, aux_model, progress, description, on_epoch)


def _fit(
    model: nn.Module,
    dataset: Dataset,
    labeled: Tensor,
    config: TrainConfig,
    seed: int,
    aux_model: nn.Module | None,
    progress: bool,
    description: str,
    on_epoch: Callable[[int, int], None] | None,
) -> FitResult:
    device = next(model.parameters()).device
    processes = world()[1]
    train_model = data_parallel(model, config)
    train_aux_model = data_parallel(aux_model, config) if aux_model is not None else None
    order_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    labeled = labeled.to(device)
    images, labels = dataset.train.images, dataset.train.labels
    modules = [m for m in (model, aux_model) if m is not None]
    epochs = planned_epochs(config, labeled.numel())
    optimizer, schedule = make_optimizer(modules, config, epochs, steps_per_epoch(labeled.numel(), config.batch_size))
    detach_epoch = round(config.detach_fraction * epochs)
    for module in modules:
        module.train()

    mean_loss = 0.0
    show = progress and sys.stderr.isatty()
    steps = 0
    bar = tqdm(
        total=epochs * steps_per_epoch(labeled.numel(), config.batch_size),
        desc=description,
        unit="step",
        disable=not show,
        leave=False,
    )
    for epoch in range(epochs):
        order = labeled[torch.randperm(labeled.numel(), generator=order_generator).to(device)]
        total, seen = torch.zeros((), device=device), 0
        for start in range(0, order.numel(), config.batch_size):
            batch = order[start : start + config.batch_size]
            if batch.numel() < 2 * processes:
                # A last batch of one image (per process): BatchNorm cannot take batch statistics of one
                # sample on small feature maps, and the ranking loss has no pair. Skipped; the next epoch
                # reshuffles.
                continue
            augmented = augment_batch(images[batch], dataset.augment, augment_generator)  # the same on every rank
            mine = shard(batch.numel())
            x = conv_layout(dataset.normalize(augmented[mine]), config.channels_last)
            y = labels[batch[mine]]
            logits, features = split_output(train_model(x))
            per_sample = F.cross_entropy(logits, y, reduction="none")  # also w_aux's targets, unsmoothed
            if config.label_smoothing > 0:
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            else:
                loss = per_sample.mean()
            if aux_model is not None:
                if features is None:
                    raise ValueError("training with w_aux needs a model that returns feature maps")
                if epoch >= detach_epoch:
                    features = [f.detach() for f in features]
                assert train_aux_model is not None  # present whenever aux_model is
                predicted = train_aux_model(features)
                loss = loss + config.ranking_weight * loss_prediction_loss(predicted, per_sample, config.margin)
            optimizer.zero_grad(set_to_none=True)
            if processes > 1:  # DDP divides the summed gradients by the number of processes
                (loss * (y.numel() * processes / batch.numel())).backward()
            else:
                loss.backward()
            optimizer.step()
            schedule.after_step()
            steps += 1
            bar.update()
            total += loss.detach() * y.numel()
            seen += y.numel()
        schedule.after_epoch()
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)  # e.g. the web page's progress line
        sums = sum_over_ranks(torch.stack([total, torch.tensor(float(seen), device=device)]))
        mean_loss = float(sums[0]) / max(1.0, float(sums[1]))  # one sync per epoch, also the NaN check
        if not math.isfinite(mean_loss):
            bar.close()
            raise TrainingDiverged(epoch)
    bar.close()
    for module in modules:
        average_buffers(module)  # under torchrun: every rank ends the round with the same running statistics
    if not weights_healthy(modules):  # the loss is measured before each step, so the last step is checked here
        raise TrainingDiverged(epochs - 1, f"weights are not finite or exceed {WEIGHT_LIMIT:g} after")
    return FitResult(mean_loss, steps, epochs)


# No weight of a ResNet trained with weight decay comes near this (they stay within about 10);
# a step with a learning rate of 1e9 lands at 5e9. Past it, a round is recorded as diverged.
WEIGHT_LIMIT = 1e6


def weights_healthy(modules: list[nn.Module]) -> bool:
    """Every parameter finite and within WEIGHT_LIMIT, and every buffer finite; one host sync."""
    checks = [p.abs().max() <= WEIGHT_LIMIT for m in modules for p in m.parameters()]  # False for NaN
    checks += [torch.isfinite(b).all() for m in modules for b in m.buffers() if b.is_floating_point()]
    return bool(torch.stack(checks).all())
