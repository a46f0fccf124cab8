"""Per-sample squared gradient norms of one layer's parameters from its input and output gradient.

With BatchNorm in eval mode the samples of a batch do not interact, so one
batched backward pass gives every sample's gradient w.r.t. each layer output,
g_i, and the layer input a_i was stored by the forward pass. The weight gradient
of sample i is a function of (a_i, g_i) alone; its squared norm can often be
computed without materializing it:

- Linear, y = W a + b:   ||dW_i||^2 = ||g_i||^2 ||a_i||^2,   ||db_i||^2 = ||g_i||^2
  (with extra sequence dims, the Gram form below over positions t);
- Conv2d with A_i = unfold(a_i) [D, T] and G_i = g_i [p, T]: dW_i = G_i A_i^T, so either
  materialize it (cost ~ T D p; done as one grouped weight-gradient convolution) or use
  the "ghost norm" (Goodfellow 2015; Li et al. 2022)
  ||G_i A_i^T||_F^2 = sum_{t,t'} (A_i^T A_i)_{tt'} (G_i^T G_i)_{tt'} (cost ~ T^2 (D + p)).
  For stride 1 the unfold is not needed: column t of A_i is the input at the k = kh*kw
  positions t + delta, so (A_i^T A_i)_{tt'} = sum_delta R_i[t + delta, t' + delta] with
  R_i = a_i^T a_i the Gram of the (zero-padded) input pixels: cost ~ T_in^2 C + T^2 (p + k)
  instead of T^2 (D + p), about k times less. Each layer takes the route with the fewest
  multiply-adds: for the CIFAR ResNet-18, materializing in the stem, stage 1 and the
  stride-2 layers of stage 2, the shifted Gram in the stride-1 layers of stages 2-4, the
  unfolded ghost norm in the stride-2 layers of stages 3-4;
  ||db_i||^2 = ||sum_t G_i[:, t]||^2;
- BatchNorm (eval): dgamma_i = sum_positions g_i * x_hat_i, dbeta_i = sum_positions g_i,
  with x_hat from the running statistics;
- any other module with parameters: an exact per-sample vector-Jacobian product with
  torch.func (vmap over grad of <module(a_i), g_i>), never an approximation.

Every function returns {parameter name: squared norm [B]} for the module's own
trainable parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

SquaredNorms = dict[str, Tensor]

# Per-sample weight gradients formed per grouped convolution: about 2^20 floats, at most 16 samples,
# the fastest group size measured for every ResNet-18 layer shape (bench/gradnorm.py --group N;
# the README keeps the figures, so they do not go stale here).
GROUP_FLOATS, MAX_GROUP = 1 << 20, 16

ConvRoute = Literal["materialize", "unfolded_ghost", "shifted_ghost"]


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters(recurse=False) if p.requires_grad}


def _ghost(a: Tensor, g: Tensor) -> Tensor:
    """||sum_t g_t a_t^T||_F^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t') per sample; a [B, T, D], g [B, T, p]."""
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))


def _gram_or_materialize(a: Tensor, g: Tensor) -> Tensor:
    """||sum_t g_t a_t^T||_F^2 per sample for a [B, T, D], g [B, T, p], by the cheaper route."""
    positions, d, p = a.shape[1], a.shape[2], g.shape[2]
    if positions * positions * (d + p) < positions * d * p:
        return _ghost(a, g)
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


def conv2d_per_sample_grads(module: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """Per-sample weight gradients [B, p, C, kh, kw] in one grouped weight-gradient convolution.

    Stacking the batch along channels ([1, B*C, H, W]) with groups=B makes group b's
    weight gradient exactly sample b's: the same FLOPs as the batch's weight gradient,
    through the same optimized kernel, without the unfold copy.
    """
    batch, channels = a.shape[:2]
    out_channels = g.shape[1]
    kernel = module.weight.shape[2:]
    shape_only = a.new_empty((batch * out_channels, channels, *kernel))  # read for its shape, never its values
    assert not isinstance(module.padding, str)  # conv2d_supported() routes "same"/"valid" to the fallback
    _, weight_grad, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, batch * out_channels, *g.shape[2:]),
        a.reshape(1, batch * channels, *a.shape[2:]),
        shape_only,
        None,
        list(module.stride),
        list(module.padding),
        list(module.dilation),
        False,
        [0, 0],
        batch,
        [False, True, False],
    )
    return weight_grad.view(batch, out_channels, channels, *kernel)


def conv2d_route(module: nn.Conv2d, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> ConvRoute:
    """The cheapest exact route to the per-sample weight-gradient norms of this layer (multiply-adds)."""
    positions_in, positions = in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]  # T_in, T
    channels, p = module.weight.shape[1], module.weight.shape[0]
    taps = module.weight[0, 0].numel()  # k = kh * kw
    costs: dict[ConvRoute, int] = {
        "materialize": positions * channels * taps * p,
        "unfolded_ghost": positions * positions * (channels * taps + p),
    }
    if tuple(module.stride) == (1, 1) and tuple(module.dilation) == (1, 1):
        costs["shifted_ghost"] = positions_in * positions_in * channels + positions * positions * (p + taps)
    return min(costs, key=costs.__getitem__)


def conv2d_work_floats(module: nn.Conv2d, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Floats per sample of the largest temporary buffers of ``conv2d_norms`` (to size chunks)."""
    positions_in, positions = in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]
    d, p = module.weight[0].numel(), module.weight.shape[0]
    route = conv2d_route(module, in_hw, out_hw)
    if route == "materialize":
        return d * p
    if route == "unfolded_ghost":
        return d * positions + 3 * positions * positions
    assert not isinstance(module.padding, str)
    padded = (in_hw[0] + 2 * module.padding[0]) * (in_hw[1] + 2 * module.padding[1])
    return positions_in * positions_in + padded * padded + 3 * positions * positions


def _shifted_input_gram(module: nn.Conv2d, a: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """A_i^T A_i [B, T, T] of a stride-1 convolution without unfolding a (see the module docstring).

    R = a^T a over the input pixels, zero-padded like the input, viewed as [B, H, W, H, W];
    the Gram of the unfolded input is the sum over kernel offsets (di, dj) of R shifted by
    (di, dj) in both position pairs at once.
    """
    batch, _, height, width = a.shape
    assert not isinstance(module.padding, str)
    pad_h, pad_w = module.padding
    kernel_h, kernel_w = module.kernel_size
    flat = a.flatten(2)  # [B, C, T_in]
    pixel_gram = torch.bmm(flat.transpose(1, 2), flat).view(batch, height, width, height, width)
    pixel_gram = F.pad(pixel_gram, (pad_w, pad_w, pad_h, pad_h, pad_w, pad_w, pad_h, pad_h))
    out_h, out_w = out_hw
    total = torch.zeros(batch, out_h, out_w, out_h, out_w, device=a.device, dtype=a.dtype)
    for di in range(kernel_h):
        for dj in range(kernel_w):
            total += pixel_gram[:, di : di + out_h, dj : dj + out_w, di : di + out_h, dj : dj + out_w]
    return total.view(batch, out_h * out_w, out_h * out_w)


def conv2d_weight_norms(module: nn.Conv2d, a: Tensor, g: Tensor, route: ConvRoute) -> Tensor:
    """||dW_i||^2 [B] from the input a [B, C, H, W] and output gradient g [B, p, Ho, Wo] by ``route``."""
    out_hw = (g.shape[2], g.shape[3])
    if route == "materialize":
        group = max(1, min(MAX_GROUP, GROUP_FLOATS // module.weight.numel()))
        return torch.cat(
            [
                conv2d_per_sample_grads(module, a_part, g_part).flatten(1).pow(2).sum(1)
                for a_part, g_part in zip(a.split(group), g.split(group), strict=True)
            ]
        )
    flat_g = g.flatten(2)  # [B, p, T]
    if route == "unfolded_ghost":
        assert not isinstance(module.padding, str)
        unfolded = F.unfold(
            a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # [B, D, T]
        return _ghost(unfolded.transpose(1, 2), flat_g.transpose(1, 2))
    output_gram = torch.bmm(flat_g.transpose(1, 2), flat_g)  # G_i^T G_i [B, T, T]
    return (_shifted_input_gram(module, a, out_hw) * output_gram).sum(dim=(1, 2))


def conv2d_norms(module: nn.Conv2d, a: Tensor, g: Tensor) -> SquaredNorms:
    params = _trainable(module)
    a, g = a.float().contiguous(), g.float().contiguous()
    out: SquaredNorms = {}
    if "weight" in params:
        route = conv2d_route(module, (a.shape[2], a.shape[3]), (g.shape[2], g.shape[3]))
        out["weight"] = conv2d_weight_norms(module, a, g, route)
    if "bias" in params:
        out["bias"] = g.flatten(2).sum(2).pow(2).sum(1)
    return out


def batchnorm_supported(module: _BatchNorm) -> bool:
    # Batch statistics would make samples interact; only running statistics keep them independent.
    return module.running_mean is not None and module.running_var is not None and not module.training


def batchnorm_norms(module: _BatchNorm, a: Tensor, g: Tensor) -> SquaredNorms:
    params = _trainable(module)
    batch, channels = a.shape[0], a.shape[1]
    a, g = a.float().reshape(batch, channels, -1), g.float().reshape(batch, channels, -1)
    assert module.running_mean is not None and module.running_var is not None
    mean = module.running_mean.float()
    inv_std = torch.rsqrt(module.running_var.float() + module.eps)
    grad_sum = g.sum(2)  # [B, C] = dbeta_i
    out: SquaredNorms = {}
    if "weight" in params:
        # dgamma_i = sum_n g (a - mean) inv_std = inv_std (sum_n g a - mean sum_n g): one fused reduction.
        grad_dot_input = torch.einsum("bcn,bcn->bc", g, a)
        out["weight"] = ((grad_dot_input - mean * grad_sum) * inv_std).pow(2).sum(1)
    if "bias" in params:
        out["bias"] = grad_sum.pow(2).sum(1)
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
    # _BatchNorm also covers SyncBatchNorm (train.sync_batchnorm), which is plain BatchNorm in eval mode
    if isinstance(module, _BatchNorm) and batchnorm_supported(module):
        return batchnorm_norms
    return None
