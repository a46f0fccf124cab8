"""Run by tests/test_distributed.py under torchrun (2 processes, gloo on the CPU).

distributed_worker.py picks OUT      each process scores its shard; rank 0 saves the picks
distributed_worker.py fit OUT        a DistributedDataParallel fit; every rank saves its weights
distributed_worker.py fail ARGS...   `lplgrad ARGS` where rank 1 fails in its second round
distributed_worker.py features OUT   the cached-mode features of a small dataset, each rank its shard
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lplgrad.config.schema import TrainConfig
from lplgrad.errors import UserError
from lplgrad.models import LossPredictionModule, ModelOutput, ResNet18
from lplgrad.runtime.distributed import is_writer, launch_rank, world
from lplgrad.strategies import QueryContext, create_strategy
from lplgrad.train.fit import fit
from tests.batchnorm import randomize_batchnorm
from tests.helpers import make_dataset

SCORED = ("entropy", "ent-gradnorm", "lplgrad", "coreset", "lplgrad-diverse")


def picks() -> dict[str, list]:
    """Each strategy's 9 picks (and scores) among 31 candidates: the shards differ in size."""
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(4, width=4))
    aux_model = LossPredictionModule(model.feature_channels, 8)
    dataset = make_dataset(num_train=64)
    candidates = torch.arange(3, 64, 2)
    found = {}
    for name in SCORED:
        strategy = create_strategy(name, **({"pool_factor": 2} if name == "lplgrad-diverse" else {}))
        aux = aux_model if strategy.uses_aux_model else None
        context = QueryContext(model, dataset, candidates, torch.arange(0, 6, 2), torch.Generator().manual_seed(1), aux)
        selection = strategy.select(context, 9)
        scores = selection.scores.tolist() if selection.scores is not None else None
        found[name] = [selection.indices.tolist(), scores]
    return found


class NoBatchStatistics(nn.Module):
    """A small convnet with GroupNorm: its gradient on a batch is the mean of per-image gradients, so
    2 processes x half batches must reproduce one process on whole batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> ModelOutput:
        features = torch.relu(self.norm(self.conv(x)))
        return ModelOutput(self.fc(features.mean((2, 3))), [features])


FIT_CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.1, milestones=[0.5])
FIT_LABELED = torch.arange(45)  # 3 batches per epoch, the last of 13 images: shards of 6 and 7


def fitted() -> dict[str, dict[str, Tensor]]:
    """Weights after ``fit`` of the GroupNorm net (plain cross-entropy) and of a ResNet-18 with w_aux."""
    dataset = make_dataset(num_train=64)
    torch.manual_seed(0)
    plain = NoBatchStatistics()
    fit(plain, dataset, FIT_LABELED, FIT_CONFIG, seed=5)
    resnet = ResNet18(4, width=4)
    aux_model = LossPredictionModule(resnet.feature_channels, 8)
    fit(resnet, dataset, FIT_LABELED, FIT_CONFIG, seed=5, aux_model=aux_model)
    return {"plain": plain.state_dict(), "resnet": resnet.state_dict(), "aux": aux_model.state_dict()}


def features_by_rank(out: Path) -> None:
    """``cached_features_dataset`` in last mode under torchrun: each rank saves how many images it
    put through the backbone and the rows it ended with."""
    from lplgrad.train import features

    real, counted = features.pooled_features, []
    features.pooled_features = lambda *a, **k: counted.append(len(a[2])) or real(*a, **k)  # type: ignore[assignment]
    dataset = features.cached_features_dataset(
        make_dataset(num_train=9, num_test=5), "efficientnet-lite0", "default", out / "cache", "last"
    )
    rows = {"train": dataset.train.images, "test": dataset.test.images, "counted": counted}
    torch.save(rows, out / f"rank-{world()[0]}.pt")


def fail_in_round_1(args: list[str]) -> int:
    """`lplgrad ARGS`, with rank 1's evaluation of round 1 raising: rank 0 is then inside a collective."""
    import lplgrad.core.round
    from lplgrad.cli.main import main

    real_evaluate, calls = lplgrad.core.round.evaluate, []

    def failing_evaluate(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if launch_rank() == 1 and len(calls) == 2:
            raise UserError("the simulated failure of rank 1")
        return real_evaluate(*a, **k)

    lplgrad.core.round.evaluate = failing_evaluate
    return main(args)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "fail":
        sys.exit(fail_in_round_1(rest))
    dist.init_process_group("gloo")
    if mode == "picks":
        result = picks()
        if is_writer():
            torch.save({"world": world()[1], "picks": result}, rest[0])
    elif mode == "fit":
        torch.save(fitted(), Path(rest[0]) / f"rank-{world()[0]}.pt")
    elif mode == "features":
        features_by_rank(Path(rest[0]))
    dist.destroy_process_group()
