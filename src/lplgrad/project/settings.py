"""A project's training settings: DIR/config.toml, the run configuration's schema with the labeling
defaults below under the user's values (``--config``, flags, ``--set``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lplgrad.atomic_io import write_atomic
from lplgrad.config import RunConfig, resolve
from lplgrad.config_files import read_toml, to_toml

CONFIG_FILE = "config.toml"

# Labeling starts small: a step floor keeps a round on 20 labeled images from being 20 steps of
# training (docs/results/training-recipes: at 100 labeled CIFAR-10 images, 15 epochs reach 10%,
# chance, and 300 steps 25%; at 2,000 the floor costs nothing). Width 16 and 30 epochs keep a
# round to minutes on a CPU; set model.width = 64 on a GPU.
PROJECT_DEFAULTS: dict[str, Any] = {
    "data.name": "project",
    "model.width": 16,
    "train.epochs": 30,
    "train.min_steps": 300,
    "train.lr": 0.05,
    "train.batch_size": 64,
    "train.milestones": [0.8],
    "active.strategies": ["lplgrad"],
}


def resolve_settings(values: dict[str, Any]) -> RunConfig:
    return resolve({**PROJECT_DEFAULTS, **values})


def read_settings(project: Path) -> RunConfig:
    return resolve_settings(read_toml(project / CONFIG_FILE))


def write_settings(project: Path, config: RunConfig) -> None:
    write_atomic(project / CONFIG_FILE, to_toml(config))
