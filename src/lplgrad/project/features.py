"""A labeling project's feature cache: a frozen backbone's pooled features of its images.

Computed once per image content (sha256) and backbone (name, weights, input size), stored in the
project database as float16 (``db.features``), a chunk of images per transaction: memory is bounded
by the chunk, a killed computation keeps its finished chunks and goes on from there, an image whose
bytes change has a new hash and is computed again (never served stale), and a project whose
backbone changes computes the new backbone's features beside the old ones, never mixing them.
Decoding runs in threads (``images.decode``) while the backbone works on the chunk before.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lplgrad.config.schema import RunConfig
from lplgrad.experiment.runner import resolve_device
from lplgrad.models.backbones import BackboneSpec, backbone_spec, create_pretrained
from lplgrad.project import db
from lplgrad.project.duplicates import compare_pending
from lplgrad.project.feature_shards import sharded_chunks
from lplgrad.project.images import decode
from lplgrad.train.features import pooled_features

log = logging.getLogger(__name__)

CHUNK = 256  # images decoded, computed and written at once


def backbone_key(config: RunConfig, image_size: int) -> str:
    return f"{config.model.backbone}|{config.model.weights}|{image_size}"


def project_features(
    conn: object, rows: list[db.ImageRow], config: RunConfig, progress: bool = True, sharded: bool = False
) -> tuple[Tensor, BackboneSpec]:
    """float16 [len(rows), sum(C_k)] of these images, computing (and storing) only the missing ones,
    and the backbone's spec (its four feature levels split a row). The answer is filled in place as
    stored vectors are read and chunks computed: memory is the answer and one chunk, never a copy.
    ``sharded``: rank 0 under torchrun, the other ranks waiting in ``feature_shards.receive_inputs``."""
    spec = backbone_spec(config.model.backbone, config.model.input_size)  # weights only when some are missing
    key = backbone_key(config, spec.image_size)
    dims = sum(spec.feature_channels)
    positions: dict[str, list[int]] = {}  # content hash -> the rows that have it
    for index, row in enumerate(rows):
        positions.setdefault(row.sha256, []).append(index)
    matrix = np.zeros((len(rows), dims), dtype=np.float16)
    found = set()
    for digest, vector in db.stored_features(conn, key, list(positions)):  # type: ignore[arg-type]
        matrix[positions[digest]] = np.frombuffer(vector, dtype=np.float16, count=dims)
        found.add(digest)
    missing = [rows[where[0]] for digest, where in positions.items() if digest not in found]
    if missing:
        log.info("computing %s features of %d images (once; stored in the project)", spec.name, len(missing))
        model = config.model
        backbone, spec = create_pretrained(model.backbone, 2, model.weights, model.input_size)
        backbone.to(resolve_device(config.device))
        chunks = [missing[start : start + CHUNK] for start in range(0, len(missing), CHUNK)]
        show = progress and sys.stderr.isatty()
        bar = tqdm(total=len(missing), desc="features", unit="img", disable=not show, leave=False)
        computed = sharded_chunks(chunks, config, backbone, spec) if sharded else _local_chunks(chunks, backbone, spec)
        for chunk, vectors in computed:
            items = [(row.sha256, vector.tobytes()) for row, vector in zip(chunk, vectors, strict=True)]
            with db.transaction(conn):  # type: ignore[arg-type]
                db.add_features(conn, key, items)  # type: ignore[arg-type]
            for row, vector in zip(chunk, vectors, strict=True):
                matrix[positions[row.sha256]] = vector
            bar.update(len(chunk))
        bar.close()
    compare_pending(conn, key, dims)  # the new ones, and any a kill or an older lplgrad left
    return torch.from_numpy(matrix), spec


def _local_chunks(
    chunks: list[list[db.ImageRow]], backbone: torch.nn.Module, spec: BackboneSpec
) -> Iterator[tuple[list[db.ImageRow], np.ndarray]]:
    """Each chunk with its float16 features, the next chunk decoding in a thread while the backbone runs."""
    with ThreadPoolExecutor(1) as decoder:
        pending = decoder.submit(decode, chunks[0], spec.image_size)
        for index, chunk in enumerate(chunks):
            images = pending.result()
            if index + 1 < len(chunks):
                pending = decoder.submit(decode, chunks[index + 1], spec.image_size)
            yield chunk, pooled_features(backbone, spec, images).numpy()
