"""Run by tests/test_distributed.py under torchrun: each process scores its shard; rank 0 saves the picks."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from lplgrad.distributed import is_writer, world
from lplgrad.models import ResNet18
from lplgrad.models.batchnorm import randomize_batchnorm
from lplgrad.strategies import QueryContext, create_strategy
from tests.helpers import make_dataset


def picks() -> dict[str, list]:
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(4, width=4))
    dataset = make_dataset(num_train=64)
    candidates = torch.arange(3, 64, 2)  # 31 candidates: the shards differ in size
    found = {}
    for name in ("entropy", "ent-gradnorm"):
        context = QueryContext(model, dataset, candidates, torch.arange(3), torch.Generator().manual_seed(1))
        selection = create_strategy(name).select(context, 9)
        found[name] = [selection.indices.tolist(), selection.scores.tolist()]
    return found


if __name__ == "__main__":
    dist.init_process_group("gloo")
    result = picks()
    if is_writer():
        torch.save({"world": world()[1], "picks": result}, sys.argv[1])
    dist.destroy_process_group()
