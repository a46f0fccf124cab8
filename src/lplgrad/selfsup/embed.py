"""``lplgrad embed``: SimCLR features of a run configuration's training pool, written for typiclust
and probcover (``active.embeddings`` and, for image folders, ``active.embeddings_index``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from lplgrad.config import RunConfig
from lplgrad.data import load_dataset
from lplgrad.distributed import launched
from lplgrad.embeddings import index_path, write_embeddings
from lplgrad.errors import UserError
from lplgrad.experiment import resolve_device
from lplgrad.loop import model_stem
from lplgrad.selfsup.simclr import SimCLRConfig, embed_images, train_simclr


@dataclass(frozen=True)
class EmbedSummary:
    """What ``embed_pool`` wrote and how long it took."""

    embeddings: Path
    index: Path | None
    shape: tuple[int, int]
    seconds: float


def embed_pool(config: RunConfig, simclr: SimCLRConfig, out: Path) -> EmbedSummary:
    """Train SimCLR on the pool of ``config``'s dataset (the backbone's width and stem follow
    ``model``) and write the features of every training image to ``out`` (.npy)."""
    if launched():
        raise UserError("embed runs in one process; start it without torchrun")
    out = out.expanduser()
    if out.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {out}")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out does not exist: {out.parent}")
    start = time.perf_counter()
    dataset = load_dataset(config.data)
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
