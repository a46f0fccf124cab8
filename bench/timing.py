"""Timing shared by the bench scripts: interleaved rounds, fastest call kept."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(device: torch.device, methods: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Seconds of each method's fastest call over ``repeat`` rounds that run every method in turn,
    so a slow spell of a shared machine hits all methods alike instead of one of them."""
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeat):
        for name, method in methods.items():
            sync(device)
            start = time.perf_counter()
            method()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best
