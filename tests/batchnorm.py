"""Non-trivial BatchNorm statistics, for tests and benchmarks of code that runs BatchNorm in eval mode."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Draw running statistics and affine parameters of every BatchNorm layer (in place, from
    ``generator``, else the global one). A new model's eval-mode BatchNorm is nearly the identity,
    which would hide a mistake in how the gradient-norm engine treats it."""

    def draw(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.uniform_(low, high, generator=generator)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None and module.running_var is not None:
                draw(module.running_mean, -0.5, 0.5)
                draw(module.running_var, 0.5, 2.0)
            if module.affine:
                draw(module.weight, 0.5, 1.5)
                draw(module.bias, -0.2, 0.2)
    return model
