"""``lplgrad embed --backbone NAME``: a pretrained backbone's pooled features instead of SimCLR's.

The same files as a SimCLR embedding (``.npy`` rows in the pool's order, plus the path index for
image folders and projects), for ``active.embeddings``: typiclust and probcover on ImageNet
features in an experiment whose model trains from scratch, or features to use elsewhere. A project's
are read from, and added to, its feature cache (``project.features``); a dataset's from the run's
cache (``train.features.cached_features_dataset``), so neither is computed twice.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from lplgrad.config.schema import RunConfig
from lplgrad.data import load_dataset
from lplgrad.data.embeddings import index_path, write_embeddings
from lplgrad.data.imagefolder import default_cache_dir
from lplgrad.project import db
from lplgrad.project.features import project_features
from lplgrad.project.images import check_unchanged, project_keys
from lplgrad.project.settings import read_settings
from lplgrad.runtime.folder_lock import folder_lock
from lplgrad.selfsup.embed import EmbedSummary, check_out
from lplgrad.train.features import cached_features_dataset


def backbone_pool(config: RunConfig, backbone: str, out: Path) -> EmbedSummary:
    """Features of every training image of ``config``'s dataset under ``backbone`` (its ImageNet
    weights, or ``model.weights``)."""
    out = check_out(out)
    start = time.perf_counter()
    dataset = load_dataset(config.data)
    cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
    weights, size = _weights(config, backbone), config.model.input_size
    features = cached_features_dataset(dataset, backbone, weights, cache, input_size=size).train.images
    vectors = features.flatten(1).float()
    write_embeddings(out, vectors, dataset.train_files)
    return _summary(out, dataset.train_files, vectors.shape, start)


def backbone_project(project: Path, backbone: str, out: Path) -> EmbedSummary:
    """Features of a project's pool images under ``backbone``, from its cache (missing ones computed
    and stored), indexed by each image's full path."""
    out = check_out(out)
    start = time.perf_counter()
    db.require_project(project)
    config = read_settings(project)
    config = replace(config, model=replace(config.model, backbone=backbone, weights=_weights(config, backbone)))
    with folder_lock(project, "project"), closing(db.connect(project)) as conn:
        rows = check_unchanged(db.pool_images(conn))
        features, _ = project_features(conn, rows, config)
    vectors = features.float()
    keys = project_keys(rows)
    write_embeddings(out, vectors, keys)
    return _summary(out, keys, vectors.shape, start)


def _weights(config: RunConfig, backbone: str) -> str:
    """The configured weights when they are for this backbone, else its default (ImageNet)."""
    return config.model.weights if config.model.backbone == backbone else "default"


def _summary(out: Path, files: tuple[str, ...], shape: tuple[int, ...], start: float) -> EmbedSummary:
    """What was written (an index when the images have paths) and how long it took."""
    index = index_path(out) if files else None
    return EmbedSummary(out, index, (int(shape[0]), int(shape[1])), time.perf_counter() - start)
