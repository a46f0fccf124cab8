"""Several processes (torchrun): rank, world size, who writes, and gathering a sharded result.

Every function is a no-op in a single process, so the rest of the code reads the same with or
without torch.distributed. Shards are contiguous slices with no padding (unlike
DistributedSampler, which repeats items to even out the ranks), so no candidate is scored twice
or dropped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


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
