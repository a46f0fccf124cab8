"""``lplgrad embed``: SimCLR features of a run configuration's training pool, or of a labeling
project's pool, written for typiclust and probcover (``active.embeddings`` and, for image folders
and projects, ``active.embeddings_index``)."""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lplgrad.config.schema import RunConfig
from lplgrad.data import Dataset, Split, load_dataset
from lplgrad.data.dataset import dataset_of
from lplgrad.data.embeddings import index_path, write_embeddings
from lplgrad.errors import UserError
from lplgrad.experiment.runner import resolve_device
from lplgrad.models.build import model_stem
from lplgrad.project import db
from lplgrad.project.images import decode, project_keys
from lplgrad.project.settings import read_settings
from lplgrad.runtime.distributed import launched
from lplgrad.selfsup.simclr import SimCLRConfig, embed_images, train_simclr


@dataclass(frozen=True)
class EmbedSummary:
    """What ``embed_pool`` wrote and how long it took."""

    embeddings: Path
    index: Path | None
    shape: tuple[int, int]
    seconds: float


def check_out(out: Path) -> Path:
    if launched():
        raise UserError("embed runs in one process; start it without torchrun")
    out = out.expanduser()
    if out.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {out}")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out does not exist: {out.parent}")
    return out


def embed_pool(config: RunConfig, simclr: SimCLRConfig, out: Path) -> EmbedSummary:
    """Train SimCLR on the pool of ``config``'s dataset (the backbone's width and stem follow
    ``model``) and write the features of every training image to ``out`` (.npy)."""
    out = check_out(out)
    start = time.perf_counter()
    return _embed(load_dataset(config.data), config, simclr, out, start)


def embed_project(project: Path, simclr: SimCLRConfig, out: Path) -> EmbedSummary:
    """The same for a labeling project's pool (its unlabeled and labeled images, decoded at the
    project's image size; memory: images x 3 x size^2 bytes), indexed by each image's full path."""
    out = check_out(out)
    start = time.perf_counter()
    db.require_project(project)
    with closing(db.connect(project, readonly=True)) as conn:
        rows = db.pool_images(conn)
        classes, size = db.classes(conn), int(db.setting(conn, "image_size") or 64)
    config = read_settings(project)
    images = decode(rows, size)
    pool = Split(images, torch.zeros(len(rows), dtype=torch.long))  # labels are never read
    dataset = dataset_of("project", pool, pool, classes, train_files=project_keys(rows))  # SimCLR makes its own views
    return _embed(dataset, config, simclr, out, start)


def _embed(dataset: Dataset, config: RunConfig, simclr: SimCLRConfig, out: Path, start: float) -> EmbedSummary:
    device = resolve_device(config.device)
    stem = model_stem(config, dataset.image_shape[1])
    simclr = replace(simclr, width=config.model.width, stem=stem, seed=config.seed)
    model = train_simclr(dataset, simclr, device)
    features = embed_images(model, dataset, device, config.train.eval_batch_size)
    write_embeddings(out, features, dataset.train_files)
    return EmbedSummary(
        out,
        index_path(out) if dataset.train_files else None,
        (int(features.shape[0]), int(features.shape[1])),
        time.perf_counter() - start,
    )
