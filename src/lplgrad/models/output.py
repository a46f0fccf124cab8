"""Reading a model's output: logits alone, or (logits, feature maps)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def split_output(output: Tensor | Sequence) -> tuple[Tensor, list[Tensor] | None]:
    """Return (logits, feature maps or None) for a model that returns a tensor or a tuple.

    A tuple / named tuple's first item is the logits and its second, when present,
    the list of feature maps; a model that returns a plain tensor has no features.
    """
    if isinstance(output, Tensor):
        return output, None
    logits = output[0]
    features = list(output[1]) if len(output) > 1 else None
    return logits, features


def penultimate(features: list[Tensor]) -> Tensor:
    """The embedding a linear head reads: global average pool of the last feature map [B, C]."""
    last = features[-1]
    return last.flatten(2).mean(2) if last.dim() > 2 else last
