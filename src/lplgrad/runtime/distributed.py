"""Several processes (torchrun): joining the process group, rank, world size, who writes, and
combining sharded results.

Every function is a no-op in a single process, so the rest of the code reads the same with or
without torch.distributed. Shards are contiguous slices with no padding (unlike
DistributedSampler, which repeats items to even out the ranks), so no candidate is scored twice
or dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lplgrad.errors import UserError

# How long a process waits in a collective for the others. Generous (a checkpoint write on rank 0
# or a slow first CUDA call), but finite: a process that died without torchrun noticing ends the run.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
LOADING_TIMEOUT = timedelta(hours=12)  # how long the other processes wait for the first to load the data


def launched() -> bool:
    """Whether torchrun started this process as one of several (it sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); readable before the group exists."""
    return int(os.environ.get("RANK", "0"))


def uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Under torchrun, join the process group for the body: NCCL when the run uses GPUs (each
    process on GPU LOCAL_RANK), gloo on CPUs. Without torchrun (or when already joined) it does
    nothing. The group is left only after a normal exit: after an error the process just ends,
    and torchrun stops the other processes rather than each waiting for a collective that will
    never complete."""
    if not launched() or dist.is_initialized():
        yield
        return
    cuda = uses_cuda(device)
    if cuda:
        _check_gpus(device)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    yield
    dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes results, checkpoints and logs (rank 0)."""
    return world()[0] == 0


def shard(count: int) -> slice:
    """This rank's contiguous part of ``count`` items; the parts of all ranks cover each item once."""
    rank, size = world()
    return slice(count * rank // size, count * (rank + 1) // size)


def gather(part: Tensor) -> Tensor:
    """Concatenate every rank's ``part`` (sizes may differ by one) in rank order, on every rank."""
    size = world()[1]
    if size == 1:
        return part
    sizes = [torch.zeros(1, dtype=torch.long, device=part.device) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([part.shape[0]], device=part.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=part.device)
    padded[: part.shape[0]] = part
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process stopped (gloo reports
    the closed connection as a plain RuntimeError, NCCL as a DistError)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("gloo" in text or "closed by peer" in text or "reset by peer" in text)


def _check_gpus(device: str) -> None:
    """One GPU per process: "cuda" (or "auto"), never one named GPU for all, and enough of them."""
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if device.startswith("cuda:"):
        raise UserError(f"under torchrun use --device cuda (each process takes GPU LOCAL_RANK), not {device}")
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= gpus:
        raise UserError(f"process {local_rank} of this machine has no GPU: {gpus} GPU(s); lower --nproc_per_node")


@contextmanager
def local_rank_first() -> Iterator[None]:
    """Run the body on the first process of each machine before the others (e.g. loading data, which
    may download, decode and write a cache), so they read what it wrote instead of racing it."""
    if world()[1] == 1:
        yield
        return
    # A first download or decode can outlast COLLECTIVE_TIMEOUT: wait on a group of our own.
    patient = dist.new_group(backend="gloo", timeout=LOADING_TIMEOUT)  # collective: every rank creates it
    assert isinstance(patient, dist.ProcessGroup)  # every rank is a member
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        dist.barrier(group=patient)
    yield
    if first:
        dist.barrier(group=patient)


def sum_over_ranks(value: Tensor) -> Tensor:
    """The element-wise sum of ``value`` over every rank (``value`` itself in one process)."""
    if world()[1] == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total


def share(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the checkpoints only rank 0 can read); a pickled broadcast."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(module: nn.Module) -> None:
    """Average ``module``'s floating-point buffers (BatchNorm running statistics) over the ranks, in
    place: each rank's last forward updated them from its own shard, so without this the ranks
    would end a round holding different models."""
    if world()[1] == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world()[1]
