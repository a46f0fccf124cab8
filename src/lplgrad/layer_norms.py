"""Per-sample squared gradient norms of one layer's parameters from its input and output gradient.

With BatchNorm in eval mode the samples of a batch do not interact, so one
batched backward pass gives every sample's gradient w.r.t. each layer output,
g_i, and the layer input a_i was stored by the forward pass. The weight gradient
of sample i is a function of (a_i, g_i) alone; its squared norm can often be
computed without materializing it:

- Linear, y = W a + b:   ||dW_i||^2 = ||g_i||^2 ||a_i||^2,   ||db_i||^2 = ||g_i||^2
  (with extra sequence dims, the Gram form below over positions t);
- Conv2d with A_i = unfold(a_i) [D, T] and G_i = g_i [p, T]: dW_i = G_i A_i^T, so either
  materialize it (cost ~ T D p) or use the "ghost norm" (Goodfellow 2015; Li et al. 2022)
  ||G_i A_i^T||_F^2 = sum_{t,t'} (A_i^T A_i)_{tt'} (G_i^T G_i)_{tt'} (cost ~ T^2 (D + p)),
  whichever is cheaper for the layer; ||db_i||^2 = ||sum_t G_i[:, t]||^2;
- BatchNorm (eval): dgamma_i = sum_positions g_i * x_hat_i, dbeta_i = sum_positions g_i,
  with x_hat from the running statistics;
- any other module with parameters: an exact per-sample vector-Jacobian product with
  torch.func (vmap over grad of <module(a_i), g_i>), never an approximation.

Every function returns {parameter name: squared norm [B]} for the module's own
trainable parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

SquaredNorms = dict[str, Tensor]


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters(recurse=False) if p.requires_grad}


def _gram_or_materialize(a: Tensor, g: Tensor) -> Tensor:
    """||sum_t g_t a_t^T||_F^2 per sample for a [B, T, D], g [B, T, p], by the cheaper route."""
    positions, d, p = a.shape[1], a.shape[2], g.shape[2]
    if positions * positions * (d + p) < positions * d * p:
        gram_a = torch.bmm(a, a.transpose(1, 2))  # [B, T, T]
        gram_g = torch.bmm(g, g.transpose(1, 2))
        return (gram_a * gram_g).sum(dim=(1, 2))
    per_sample = torch.bmm(g.transpose(1, 2), a)  # [B, p, D] per-sample weight gradients
    return per_sample.pow(2).sum(dim=(1, 2))


def linear_norms(module: nn.Linear, a: Tensor, g: Tensor) -> SquaredNorms:
    params = _trainable(module)
    batch = g.shape[0]
    a, g = a.float().reshape(batch, -1, a.shape[-1]), g.float().reshape(batch, -1, g.shape[-1])  # [B, T, *]
    out: SquaredNorms = {}
    if "weight" in params:
        if a.shape[1] == 1:
            out["weight"] = g.pow(2).sum(dim=(1, 2)) * a.pow(2).sum(dim=(1, 2))
        else:
            out["weight"] = _gram_or_materialize(a, g)
    if "bias" in params:
        out["bias"] = g.sum(1).pow(2).sum(1)
    return out


def conv2d_supported(module: nn.Conv2d) -> bool:
    return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def conv2d_norms(module: nn.Conv2d, a: Tensor, g: Tensor) -> SquaredNorms:
    params = _trainable(module)
    out: SquaredNorms = {}
    grads = g.float().flatten(2)  # [B, p, T]
    if "weight" in params:
        unfolded = F.unfold(
            a.float(), module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # [B, D, T]
        out["weight"] = _gram_or_materialize(unfolded.transpose(1, 2), grads.transpose(1, 2))
    if "bias" in params:
        out["bias"] = grads.sum(2).pow(2).sum(1)
    return out


def batchnorm_supported(module: _BatchNorm) -> bool:
    # Batch statistics would make samples interact; only running statistics keep them independent.
    return module.running_mean is not None and module.running_var is not None and not module.training


def batchnorm_norms(module: _BatchNorm, a: Tensor, g: Tensor) -> SquaredNorms:
    params = _trainable(module)
    batch, channels = a.shape[0], a.shape[1]
    a, g = a.float().reshape(batch, channels, -1), g.float().reshape(batch, channels, -1)
    assert module.running_mean is not None and module.running_var is not None
    mean = module.running_mean.float().view(1, -1, 1)
    inv_std = torch.rsqrt(module.running_var.float().view(1, -1, 1) + module.eps)
    out: SquaredNorms = {}
    if "weight" in params:
        out["weight"] = (g * (a - mean) * inv_std).sum(2).pow(2).sum(1)
    if "bias" in params:
        out["bias"] = g.sum(2).pow(2).sum(1)
    return out


def generic_norms(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], g: Tensor) -> SquaredNorms:
    """Exact fallback: per-sample VJP of the module's own parameters with torch.func.

    Tensor arguments are split along dim 0 (the batch); others are passed as they are.
    """
    params = {name: p.detach() for name, p in _trainable(module).items()}
    tensor_positions = [i for i, arg in enumerate(args) if isinstance(arg, Tensor)]

    def one_sample(params: dict[str, Tensor], tensors: tuple[Tensor, ...], g_i: Tensor) -> dict[str, Tensor]:
        call_args = list(args)
        for position, tensor in zip(tensor_positions, tensors, strict=True):
            call_args[position] = tensor.unsqueeze(0)

        def inner(params: dict[str, Tensor]) -> Tensor:
            output = functional_call(module, params, tuple(call_args), kwargs)
            output = output[0] if isinstance(output, tuple | list) else output
            return (output * g_i.unsqueeze(0)).sum()

        return grad(inner)(params)

    tensors = tuple(args[i].detach() for i in tensor_positions)
    per_sample = vmap(one_sample, in_dims=(None, 0, 0))(params, tensors, g)
    return {name: value.flatten(1).pow(2).sum(1) for name, value in per_sample.items()}


Rule = Callable[[Any, Tensor, Tensor], SquaredNorms]


def fast_rule(module: nn.Module) -> Rule | None:
    """The closed-form rule for this module, or None when the exact fallback must be used."""
    if type(module) is nn.Linear:
        return linear_norms
    if type(module) is nn.Conv2d and conv2d_supported(module):
        return conv2d_norms
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) and batchnorm_supported(module):
        return batchnorm_norms
    return None
