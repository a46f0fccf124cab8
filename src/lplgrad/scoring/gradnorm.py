"""Per-sample gradient norms, the querying score of LPLgrad, computed exactly in batches.

For a candidate x with logits z = w_main(x) and p = softmax(z), LPLgrad (Sec. III.C,
after Wang et al. 2022) scores x by the norm of the gradient of its predictive
entropy w.r.t. all trainable parameters of w_main, BatchNorm in eval mode, no update:

    loss="entropy":   s(x) = || d H(p) / d theta ||,   H(p) = -sum_c p_c log p_c

``loss="expected"`` is the expected gradient length over the model's own posterior
(Settles & Craven 2008; the meaningful reading of Wang et al.'s "expected-gradnorm"):

    loss="expected":  s(x) = sum_c stopgrad(p_c) * || d CE(z, c) / d theta ||

Why not the literal "norm of the gradient of sum_c p_c CE(z, c)": with p attached
that loss *is* H(p) (the scheme would equal "entropy"), and with p detached its
gradient is p - p = 0 for every input. The expectation of the norm is what differs.

Norms: ``reduction="global"`` is the paper's eq. 8, the L2 (Frobenius) norm of the
whole gradient; ``reduction="layer_sum"`` is what the paper's public code computes,
the sum over parameter tensors of each tensor's L2 norm.

How: one forward pass stores each parametrized layer's input and output; one
backward pass from the logits (autograd.grad w.r.t. the layer outputs only, so no
weight gradient of the batch is formed) gives every sample's output gradients,
and ``layer_norms`` turns (input, output gradient) into per-sample squared norms.
``per_sample_grad_norms_loop`` is the one-image-at-a-time reference.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lplgrad.models.output import split_output
from lplgrad.scoring.layer_norms import SquaredNorms, conv2d_supported, conv2d_work_floats, fast_rule, generic_norms
from lplgrad.train.inference import eval_mode

log = logging.getLogger(__name__)

Reduction = Literal["layer_sum", "global"]
ScoreLoss = Literal["entropy", "expected"]


def reduce_norms(squared_norms: Sequence[Tensor], reduction: Reduction) -> Tensor:
    """Combine per-parameter-tensor squared norms (each [B]) into one score per sample [B]."""
    if reduction not in ("layer_sum", "global"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'layer_sum' or 'global'")
    if not squared_norms:
        raise ValueError("no parameter receives a gradient")
    stacked = torch.stack(list(squared_norms)).clamp(min=0)  # [P, B]
    return stacked.sqrt().sum(0) if reduction == "layer_sum" else stacked.sum(0).sqrt()


def logit_gradients(logits: Tensor, loss: ScoreLoss) -> list[tuple[Tensor, Tensor | None]]:
    """(d loss_i / d z_i [B, C], weight [B] or None) pairs; the score is sum_k weight_k * norm_k.

    entropy: one pair, the gradient of H. expected: one pair per class c,
    d CE(z, c) / dz = p - onehot(c), weighted by p_c.
    """
    if loss == "entropy":
        with torch.enable_grad():
            z = logits.detach().float().requires_grad_(True)
            log_p = torch.log_softmax(z, dim=1)
            entropy = -(log_p.exp() * log_p).sum()
            (g,) = torch.autograd.grad(entropy, z)
        return [(g, None)]
    if loss == "expected":
        p = torch.softmax(logits.detach().float(), dim=1)
        eye = torch.eye(p.shape[1], device=p.device)
        return [(p - eye[c], p[:, c]) for c in range(p.shape[1])]
    raise ValueError(f"unknown loss {loss!r}; choose 'entropy' or 'expected'")


def _weighted_sum(parts: list[tuple[Tensor, Tensor | None]]) -> Tensor:
    return torch.stack([norms if weight is None else weight * norms for norms, weight in parts]).sum(0)


def per_sample_grad_norms_loop(
    model: nn.Module, inputs: Tensor, *, reduction: Reduction = "layer_sum", loss: ScoreLoss = "entropy"
) -> Tensor:
    """Reference: one forward and one backward per sample (per class for "expected"), as the public code does.

    Uses torch.autograd.grad, so the model's ``.grad`` fields are never touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    scores = []
    with eval_mode(model), torch.enable_grad():
        for x in inputs.split(1):
            logits, _ = split_output(model(x))
            parts = []
            for g, weight in logit_gradients(logits, loss):
                grads = torch.autograd.grad(
                    logits, params, grad_outputs=g.to(logits.dtype), retain_graph=True, allow_unused=True
                )
                squared = [t.float().pow(2).sum().reshape(1) for t in grads if t is not None]
                parts.append((reduce_norms(squared, reduction), weight))
            scores.append(_weighted_sum(parts))
    return torch.cat(scores).detach()


@dataclass
class _Call:
    """One captured module call: its arguments and its output (and the output's version, to spot in-place edits)."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Tensor
    version: int


@dataclass
class _Capture:
    """Forward hooks on every module that owns trainable parameters."""

    modules: list[nn.Module]
    calls: list[_Call] = field(default_factory=list)

    def hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        tensor = output[0] if isinstance(output, tuple | list) else output
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            self.calls.append(_Call(module, args, kwargs, tensor, tensor._version))

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Capture]:
        handles = [m.register_forward_hook(self.hook, with_kwargs=True) for m in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _owners(model: nn.Module) -> list[nn.Module]:
    """Modules that directly own at least one trainable parameter."""
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def batchable(model: nn.Module) -> bool:
    """True when the hook engine is exact in eval mode: no parameter is shared between
    modules and no BatchNorm normalizes with batch statistics (which couple the samples)."""
    owned = Counter(id(p) for m in _owners(model) for p in m.parameters(recurse=False) if p.requires_grad)
    if any(count > 1 for count in owned.values()):
        return False
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules())


def _layer_norms(call: _Call, output_grad: Tensor) -> SquaredNorms:
    rule = fast_rule(call.module)
    first = call.args[0] if call.args else None
    if rule is not None and isinstance(first, Tensor) and not call.kwargs:
        return rule(call.module, first.detach(), output_grad)
    return generic_norms(call.module, call.args, call.kwargs, output_grad)


@contextlib.contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """Build the graph with parameters not requiring grad, so its backward forms no weight gradient
    (autograd.grad w.r.t. layer outputs alone still runs the weight-gradient kernels)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _forward_captured(model: nn.Module, inputs: Tensor, frozen: bool) -> tuple[Tensor, list[_Call]]:
    """Forward with hooks; with ``frozen``, gradients flow from the input instead of the weights."""
    capture = _Capture(_owners(model))
    freeze = _weights_frozen(model) if frozen else contextlib.nullcontext()
    with freeze, capture.installed():
        logits, _ = split_output(model(inputs.detach().requires_grad_(frozen)))
    return logits, capture.calls


def _hooked_norms(model: nn.Module, inputs: Tensor, reduction: Reduction, loss: ScoreLoss) -> Tensor:
    """One forward for the chunk, one backward per logit gradient; per-layer norms from captured tensors."""
    logits, calls = _forward_captured(model, inputs, frozen=True)
    if len({id(c.module) for c in calls}) != len(calls) or any(c.output._version != c.version for c in calls):
        # A module ran twice (its per-sample gradient is a sum over calls) or an in-place op edited a
        # captured output (autograd would return the gradient of the edited tensor). The probe rules
        # this out; data-dependent control flow could still do it, and a wrong score must never pass.
        raise RuntimeError("module called twice or output edited in place during scoring")
    parts = []
    for g, weight in logit_gradients(logits, loss):
        output_grads = torch.autograd.grad(
            logits, [c.output for c in calls], grad_outputs=g.to(logits.dtype), retain_graph=True, allow_unused=True
        )
        squared: list[Tensor] = []
        for call, output_grad in zip(calls, output_grads, strict=True):
            if output_grad is not None:  # None: the loss does not reach this layer, as p.grad is None in the loop
                squared.extend(_layer_norms(call, output_grad.detach()).values())
        parts.append((reduce_norms(squared, reduction), weight))
    return _weighted_sum(parts)


def _vmap_norms(model: nn.Module, inputs: Tensor, reduction: Reduction, loss: ScoreLoss) -> Tensor:
    """Exact per-sample gradients of the whole model with torch.func (materialized; for small chunks)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def logits_of(params: dict[str, Tensor], x: Tensor) -> Tensor:
        logits, _ = split_output(functional_call(model, (params, buffers), (x.unsqueeze(0),)))
        return logits.float()

    def sample_loss(params: dict[str, Tensor], x: Tensor, g: Tensor) -> Tensor:
        # <z(theta), g> has gradient J^T g: the parameter gradient for logit gradient g.
        return (logits_of(params, x) * g.unsqueeze(0)).sum()

    with torch.no_grad():
        logits = vmap(logits_of, in_dims=(None, 0))(params, inputs).squeeze(1)
    parts = []
    for g, weight in logit_gradients(logits, loss):
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, inputs, g)
        parts.append((reduce_norms([t.flatten(1).pow(2).sum(1) for t in grads.values()], reduction), weight))
    return _weighted_sum(parts)


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 1 << 29  # 512 MiB on the CPU, so a labeling query of a large pool stays under 2 GiB


@dataclass(frozen=True)
class _Probe:
    hooks_exact: bool  # no module runs twice and no captured output is edited in place
    bytes_per_sample: int  # activations kept for the backward + the largest per-layer work buffers


def _probe(model: nn.Module, example: Tensor) -> _Probe:
    """One-sample forward passes that decide the engine and size the chunks."""
    _, calls = _forward_captured(model, example[:1], frozen=True)
    _, unfrozen_calls = _forward_captured(model, example[:1], frozen=False)
    exact = (
        len({id(c.module) for c in calls}) == len(calls)
        and all(c.output._version == c.version for c in calls)
        # A layer whose output does not depend on the input would be invisible with frozen weights.
        and [id(c.module) for c in calls] == [id(c.module) for c in unfrozen_calls]
    )
    kept, work = example[0].numel(), 0
    for call in calls:
        first = call.args[0] if call.args and isinstance(call.args[0], Tensor) else call.output
        kept += 2 * (first.numel() + call.output.numel())  # input, output, and autograd's saved copies
        if isinstance(call.module, nn.Conv2d):
            in_hw, out_hw = (first.shape[-2], first.shape[-1]), (call.output.shape[-2], call.output.shape[-1])
            if conv2d_supported(call.module):
                work = max(work, conv2d_work_floats(call.module, in_hw, out_hw))
            else:  # the torch.func fallback materializes per-sample weight gradients
                work = max(work, call.module.weight.numel())
    return _Probe(exact and batchable(model), 4 * (kept + 2 * work))


def per_sample_grad_norms(
    model: nn.Module,
    inputs: Tensor,
    *,
    reduction: Reduction = "layer_sum",
    loss: ScoreLoss = "entropy",
    chunk_size: int | None = None,
    bf16: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Score [B]: gradient norm of ``loss`` at each x_i of ``inputs`` w.r.t. all trainable parameters.

    ``model``: any nn.Module whose forward returns logits [B, C] or a tuple whose first item
    is the logits. It is put in eval mode for the call and returned to its mode; its weights,
    buffers and ``.grad`` fields are left as they were. Exact: equal to
    ``per_sample_grad_norms_loop`` up to float rounding. ``chunk_size`` (default: from a
    memory budget) bounds the samples processed at once. ``bf16`` runs the
    forward/backward under bfloat16 autocast (channels_last on CUDA) with norms
    accumulated in float32: faster on GPUs, approximate. ``transform`` maps a chunk of
    ``inputs`` to model inputs (e.g. image indices to normalized images), so only a chunk
    of images is ever gathered and held as floats.
    """
    device = next(model.parameters()).device  # where the work runs; ``inputs`` may be indices elsewhere
    if inputs.shape[0] == 0:
        return torch.zeros(0, device=device)
    prepare = _chunk_preparer(transform, bf16)
    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if bf16:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    with eval_mode(model), torch.enable_grad(), autocast:
        probe = _probe(model, prepare(inputs[:1]))
        if probe.hooks_exact:
            engine, default_chunk = _hooked_norms, _memory_budget(device) // probe.bytes_per_sample
        else:
            log.info("model shares parameters, calls a module twice or edits a layer output in place: using torch.func")
            engine, default_chunk = _vmap_norms, 8
        chunk = chunk_size or max(1, default_chunk)
        scores = _in_chunks(engine, model, inputs, prepare, chunk, reduction, loss)
    return scores.detach()


def _chunk_preparer(transform: Callable[[Tensor], Tensor] | None, bf16: bool) -> Callable[[Tensor], Tensor]:
    """What turns a chunk of inputs into model inputs: ``transform``, then channels_last for bf16 on CUDA."""

    def prepare(chunk: Tensor) -> Tensor:
        x = transform(chunk) if transform is not None else chunk
        if bf16 and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    return prepare


def _in_chunks(
    engine: Any,
    model: nn.Module,
    inputs: Tensor,
    prepare: Callable[[Tensor], Tensor],
    chunk: int,
    reduction: Reduction,
    loss: ScoreLoss,
) -> Tensor:
    """Run ``engine`` over chunks; on a GPU out-of-memory error, halve the chunk and retry that chunk."""
    scores, start = [], 0
    while start < inputs.shape[0]:
        try:
            scores.append(engine(model, prepare(inputs[start : start + chunk]), reduction, loss))
            start += chunk
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory while scoring; retrying with chunks of %d", chunk)
    return torch.cat(scores)
