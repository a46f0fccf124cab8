"""A project's training settings: DIR/config.toml, the run configuration's schema with the labeling
defaults below under the user's values (``--config``, flags, ``--set``). Only the keys a project uses
are written; benchmark keys (initial set, rounds, budget, trials, the dataset's root) are refused at
``init`` and ignored in an older project's file that still lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lplgrad.config.compat import upgrade_project_settings
from lplgrad.config.files import read_toml, to_toml
from lplgrad.config.schema import RunConfig, resolve, to_dict
from lplgrad.errors import UserError
from lplgrad.runtime.atomic_io import write_atomic

CONFIG_FILE = "config.toml"
DEFAULT_BATCH = 20  # images per batch of `lplgrad query` and of the page: small batches, fresher models

# A person's loop: a frozen ImageNet-pretrained EfficientNet-Lite0 (offline, from its wheel) with a
# linear head on its cached features needs far fewer labels than a network from scratch, and a
# round takes seconds. BADGE measured best in that regime from about 80 labels on (CIFAR-10 subset,
# 20 -> 200 labels, 5 trials: +4.4 [+2.3, +6.5] points over random at 200, AUBC +2.4;
# docs/results/head-cifar10-subset). The training recipe measured best at 100, 500 and 2,000
# labeled CIFAR-10 images (docs/results/training-recipes): a 300-step floor with a cosine schedule
# at lr 0.05. With model.backbone = resnet18 (from scratch), width 16 and 15 epochs keep a round to
# a minute or two on a CPU.
PROJECT_DEFAULTS: dict[str, Any] = {
    "data.name": "project",
    "model.backbone": "efficientnet-lite0",
    "train.finetune": "head",
    "model.width": 16,
    "train.epochs": 15,
    "train.min_steps": 300,
    "train.lr": 0.05,
    "train.schedule": "cosine",
    "train.batch_size": 128,
    "active.strategies": ["badge"],
}

# A project's labeled set, rounds and images come from the person and the database, not from these.
BENCHMARK_KEYS = frozenset(
    [f"data.{k}" for k in to_dict(RunConfig())["data"] if k not in ("name", "image_size")]
    + [f"active.{k}" for k in ("trials", "initial_size", "query_size", "rounds", "budget", "trial_offset")]
    + ["save_artifacts", "deterministic", "train.warm_start"]  # every round trains fresh models, seeded
)


def resolve_settings(values: dict[str, Any]) -> RunConfig:
    """The settings of a new project: its defaults under ``values``, which may not name a benchmark key."""
    given = [key for key in values if key in BENCHMARK_KEYS]
    if given:
        raise UserError(f"{', '.join(sorted(given))}: not a setting of a labeling project (only `lplgrad run` uses it)")
    return _check_mode(resolve({**PROJECT_DEFAULTS, **values}))


def read_settings(project: Path) -> RunConfig:
    values = upgrade_project_settings(read_toml(project / CONFIG_FILE))
    return _check_mode(resolve({**PROJECT_DEFAULTS, **{k: v for k, v in values.items() if k not in BENCHMARK_KEYS}}))


def _check_mode(config: RunConfig) -> RunConfig:
    """A project trains a pretrained backbone's head on its feature cache, or ResNet-18 from scratch:
    its cache, predictions, review and server read pooled features or images, not a trunk's maps."""
    if config.model.backbone != "resnet18" and config.train.finetune != "head":
        raise UserError(
            f"train.finetune = {config.train.finetune} with a pretrained backbone runs in `lplgrad run`; "
            "a labeling project uses train.finetune = head (or model.backbone = resnet18, from scratch)"
        )
    return config


def write_settings(project: Path, config: RunConfig) -> None:
    # data.image_size lives in the database (the size the images were registered at), data.name is "project"
    write_atomic(project / CONFIG_FILE, to_toml(config, leave_out=BENCHMARK_KEYS | {"data.name", "data.image_size"}))
