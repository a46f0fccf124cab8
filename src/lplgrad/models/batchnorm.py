"""Non-trivial BatchNorm statistics, for tests and benchmarks of code that runs BatchNorm in eval mode."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Draw running statistics and affine parameters of every BatchNorm layer (in place, from the
    global generator). A new model's eval-mode BatchNorm is nearly the identity, which would hide
    a mistake in how the gradient-norm engine treats it."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None and module.running_var is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model
