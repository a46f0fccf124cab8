"""A labeling round's feature pass under torchrun: rank 0 hands each chunk out, every rank computes a shard.

Only rank 0 opens the project database (``query``), so it alone knows which images have no features
yet. While it reads the round's inputs the other ranks wait in ``receive_inputs``: for each chunk of
missing images rank 0 broadcasts the chunk's rows, every rank decodes and computes its contiguous
shard of it (``runtime.distributed.shard``), the shards are gathered in order, and rank 0 stores the
chunk (a kill keeps the finished chunks, as in one process). When the inputs are read rank 0
broadcasts them, which ends the other ranks' wait. In one process none of this runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch import nn

from lplgrad.config.schema import RunConfig
from lplgrad.experiment.runner import resolve_device
from lplgrad.models.backbones import BackboneSpec, create_pretrained
from lplgrad.project import db
from lplgrad.project.images import decode
from lplgrad.runtime.distributed import shard, share
from lplgrad.train.features import gathered_rows, pooled_features

CHUNK_WORK, INPUTS = "chunk", "inputs"  # what rank 0 broadcasts: a chunk to compute, or the round's inputs


def sharded_chunks(
    chunks: list[list[db.ImageRow]], config: RunConfig, backbone: nn.Module, spec: BackboneSpec
) -> Iterator[tuple[list[db.ImageRow], np.ndarray]]:
    """Rank 0: each chunk with its float16 features [len(chunk), D], computed by every rank."""
    model = config.model
    for chunk in chunks:
        share((CHUNK_WORK, (model.backbone, model.weights, model.input_size, config.device, chunk)))
        yield chunk, _gathered(backbone, spec, chunk)


def receive_inputs(inputs: Any) -> Any:
    """Rank 0 sends the round's ``inputs``; every other rank computes its shard of each chunk rank 0
    sends until the inputs come, and returns them. One process: ``inputs`` as they are."""
    if inputs is not None:  # rank 0 (or a single process, where share is a no-op)
        share((INPUTS, inputs))
        return inputs
    built: dict[tuple[Any, ...], tuple[nn.Module, BackboneSpec]] = {}
    while True:
        kind, payload = share(None)
        if kind == INPUTS:
            return payload
        name, weights, input_size, device, chunk = payload
        if (name, weights, input_size) not in built:
            backbone, spec = create_pretrained(name, 2, weights, input_size)
            built[(name, weights, input_size)] = backbone.to(resolve_device(device)), spec
        _gathered(*built[(name, weights, input_size)], chunk)


def _gathered(backbone: nn.Module, spec: BackboneSpec, chunk: list[db.ImageRow]) -> np.ndarray:
    mine = chunk[shard(len(chunk))]
    return gathered_rows(pooled_features(backbone, spec, decode(mine, spec.image_size)), backbone).numpy()
