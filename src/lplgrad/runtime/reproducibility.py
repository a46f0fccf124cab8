"""What makes a run repeatable, as a context that leaves torch's global settings as it found them.

On a CPU, runs are bit-identical for a given torch build, CPU instruction set and thread count
without any switch, because training batches are NCHW (see ``data.conv_layout``). On a GPU,
cuDNN's kernel autotuning and atomic-add kernels vary between runs; ``--deterministic`` turns on
``torch.use_deterministic_algorithms`` (an op without a deterministic kernel then raises) and the
cuBLAS workspace setting it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels and no cuDNN autotuning while inside, when ``enabled``; restored after."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    previous_workspace = os.environ.get(CUBLAS_WORKSPACE)
    os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        if previous_workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
