"""A project's training settings: DIR/config.toml, the run configuration's schema with the labeling
defaults below under the user's values (``--config``, flags, ``--set``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lplgrad.atomic_io import write_atomic
from lplgrad.config import RunConfig, resolve
from lplgrad.config_files import read_toml, to_toml

CONFIG_FILE = "config.toml"

# Labeling starts small. The recipe measured best at 100, 500 and 2,000 labeled CIFAR-10 images
# (docs/results/training-recipes): a 300-step floor, so a round on 20 labels is not 20 steps of
# training, with a cosine schedule at lr 0.05. Width 16 and 15 epochs keep a round to a minute or
# two on a CPU; set model.width = 64 and more epochs on a GPU.
PROJECT_DEFAULTS: dict[str, Any] = {
    "data.name": "project",
    "model.width": 16,
    "train.epochs": 15,
    "train.min_steps": 300,
    "train.lr": 0.05,
    "train.schedule": "cosine",
    "train.batch_size": 128,
    "active.strategies": ["lplgrad"],
}


def resolve_settings(values: dict[str, Any]) -> RunConfig:
    return resolve({**PROJECT_DEFAULTS, **values})


def read_settings(project: Path) -> RunConfig:
    return resolve_settings(read_toml(project / CONFIG_FILE))


def write_settings(project: Path, config: RunConfig) -> None:
    write_atomic(project / CONFIG_FILE, to_toml(config))
