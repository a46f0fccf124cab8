"""The batched engine against an independent one-backward-per-sample oracle, on many architectures."""

import copy

import pytest
import torch
from torch import nn

from lplgrad.models import ResNet18
from lplgrad.scoring.gradnorm import batchable, per_sample_grad_norms, per_sample_grad_norms_loop, reduce_norms
from tests.batchnorm import randomize_batchnorm


def oracle(model: nn.Module, inputs: torch.Tensor, reduction: str, loss: str) -> torch.Tensor:
    """.backward() per sample (and per class for "expected") into the .grad fields of a copy."""
    clone = copy.deepcopy(model).eval()

    def norm_of(objective: torch.Tensor) -> torch.Tensor:
        clone.zero_grad(set_to_none=True)
        objective.backward(retain_graph=True)
        norms = [p.grad.double().norm() for p in clone.parameters() if p.grad is not None]
        return sum(norms) if reduction == "layer_sum" else torch.stack(norms).pow(2).sum().sqrt()

    scores = []
    for x in inputs.split(1):
        out = clone(x)
        logits = (out[0] if isinstance(out, tuple) else out).double()
        p = logits.softmax(1)
        if loss == "entropy":
            scores.append(norm_of(-(p * p.log()).sum()))
        else:
            ce = -torch.log_softmax(logits, 1)[0]
            scores.append(sum(p[0, c].detach() * norm_of(ce[c]) for c in range(p.shape[1])))
    return torch.stack([torch.as_tensor(s) for s in scores]).float()


class ConvZoo(nn.Module):
    """Conv with and without bias, stride, padding, dilation, pooling, BatchNorm1d and several linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, stride=1, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=0, bias=False)
        self.conv3 = nn.Conv2d(6, 4, 2, stride=1, padding=2, dilation=2, bias=True)
        self.fc1 = nn.Linear(4 * 2 * 2, 7)
        self.bn1d = nn.BatchNorm1d(7)
        self.fc2 = nn.Linear(7, 5, bias=False)
        self.unused = nn.Linear(3, 3)  # never called: contributes nothing, like p.grad is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv3(x)), 2)
        return self.fc2(torch.relu(self.bn1d(self.fc1(x.flatten(1)))))


class Scale(nn.Module):
    """An unusual layer with its own parameter: forces the exact torch.func fallback for that layer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + x.pow(2) * 0.1


class Unusual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = Scale(4)
        self.norm = nn.GroupNorm(2, 4)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.seq = nn.Linear(4, 6)  # applied to a sequence: the Gram form
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f = self.grouped(self.norm(self.scale(self.conv(x))))  # [B, 4, 6, 6]
        tokens = self.seq(f.flatten(2).transpose(1, 2))  # [B, 36, 6]
        return self.head(tokens.mean(1)), [f]


class InPlace(nn.Module):
    """In-place ReLU right after a conv: the engine must notice and stay exact."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


class Shared(nn.Module):
    """One linear layer applied twice: its per-sample gradient is a sum over the two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 6)
        self.block = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(torch.tanh(self.block(torch.tanh(self.block(h)))))


def models_and_inputs() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("resnet18-cifar", randomize_batchnorm(ResNet18(5, width=4)), torch.randn(6, 3, 16, 16)),
        ("resnet18-imagenet", randomize_batchnorm(ResNet18(3, width=4, stem="imagenet")), torch.randn(3, 3, 40, 40)),
        ("conv-zoo", randomize_batchnorm(ConvZoo()), torch.randn(5, 3, 12, 12)),
        ("unusual", Unusual(), torch.randn(4, 3, 8, 8)),
        ("in-place", InPlace(), torch.randn(4, 3, 6, 6)),
        ("shared", Shared(), torch.randn(5, 3, 2, 2)),
    ]


CASES = models_and_inputs()


@pytest.mark.parametrize("reduction", ["layer_sum", "global"])
@pytest.mark.parametrize("loss", ["entropy", "expected"])
@pytest.mark.parametrize(("name", "model", "inputs"), CASES, ids=[c[0] for c in CASES])
def test_equals_one_backward_per_sample(
    name: str, model: nn.Module, inputs: torch.Tensor, reduction: str, loss: str
) -> None:
    got = per_sample_grad_norms(model, inputs, reduction=reduction, loss=loss)
    want = oracle(model, inputs, reduction, loss)
    assert got.shape == (inputs.shape[0],)
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("loss", ["entropy", "expected"])
def test_reference_loop_equals_oracle(loss: str) -> None:
    _, model, inputs = CASES[2]
    got = per_sample_grad_norms_loop(model, inputs, reduction="global", loss=loss)
    torch.testing.assert_close(got, oracle(model, inputs, "global", loss), rtol=1e-4, atol=0.0)


def test_engine_choice() -> None:
    by_name = {name: model for name, model, _ in CASES}
    assert batchable(by_name["resnet18-cifar"]) and batchable(by_name["unusual"])
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert not batchable(tied)
    assert not batchable(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)))


def test_batchnorm_with_batch_statistics_matches_the_loop() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    inputs = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(
        per_sample_grad_norms(model, inputs), oracle(model, inputs, "layer_sum", "entropy"), rtol=1e-4, atol=0.0
    )


def test_model_weights_grads_buffers_and_mode_are_untouched() -> None:
    _, model, inputs = CASES[0]
    model.train()
    before = copy.deepcopy(model.state_dict())
    per_sample_grad_norms(model, inputs, loss="expected")
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    per_sample_grad_norms(model, inputs)
    assert not model.training


def test_chunks_equal_one_chunk_and_a_pool_larger_than_a_chunk() -> None:
    _, model, _ = CASES[2]
    inputs = torch.randn(23, 3, 12, 12)
    whole = per_sample_grad_norms(model, inputs, chunk_size=23)
    for chunk in (1, 4, 7):
        torch.testing.assert_close(per_sample_grad_norms(model, inputs, chunk_size=chunk), whole, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(per_sample_grad_norms(model, inputs), whole, rtol=1e-5, atol=0.0)


def test_batch_of_one_and_empty_batch() -> None:
    _, model, inputs = CASES[0]
    torch.testing.assert_close(
        per_sample_grad_norms(model, inputs[:1]), oracle(model, inputs[:1], "layer_sum", "entropy"), rtol=1e-4, atol=0.0
    )
    assert per_sample_grad_norms(model, inputs[:0]).shape == (0,)


def test_entropy_and_expected_differ() -> None:
    _, model, inputs = CASES[0]
    assert not torch.allclose(
        per_sample_grad_norms(model, inputs), per_sample_grad_norms(model, inputs, loss="expected")
    )


def test_bf16_scoring_is_close_to_float32() -> None:
    _, model, inputs = CASES[0]
    exact = per_sample_grad_norms(model, inputs)
    approx = per_sample_grad_norms(model, inputs, bf16=True)
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.9


def test_reductions_by_hand() -> None:
    squared = [torch.tensor([9.0, 0.0]), torch.tensor([16.0, 4.0])]
    assert reduce_norms(squared, "layer_sum").tolist() == [7.0, 2.0]
    assert reduce_norms(squared, "global").tolist() == [5.0, 2.0]
    with pytest.raises(ValueError):
        reduce_norms(squared, "max")


def test_resnet_uses_only_closed_form_rules_and_unusual_layers_the_fallback(monkeypatch) -> None:
    from lplgrad.scoring import gradnorm, layer_norms

    fallback_modules: list[str] = []
    original = layer_norms.generic_norms

    def spy(module, *args):
        fallback_modules.append(type(module).__name__)
        return original(module, *args)

    monkeypatch.setattr(gradnorm, "generic_norms", spy)
    _, resnet, inputs = CASES[0]
    per_sample_grad_norms(resnet, inputs)
    assert fallback_modules == []
    _, unusual, inputs = CASES[3]
    per_sample_grad_norms(unusual, inputs)
    assert sorted(fallback_modules) == ["Conv2d", "GroupNorm", "Scale"]  # grouped conv has no closed form here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("reduction", ["layer_sum", "global"])
def test_exact_on_cuda_with_tf32_off(reduction: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(10, width=16)).cuda()
    inputs = torch.randn(16, 3, 32, 32, device="cuda")
    got = per_sample_grad_norms(model, inputs, reduction=reduction)
    want = per_sample_grad_norms_loop(model, inputs, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0.0)


def test_out_of_memory_retries_with_smaller_chunks(monkeypatch) -> None:
    from lplgrad.scoring import gradnorm

    _, model, _ = CASES[2]
    inputs = torch.randn(10, 3, 12, 12)
    want = per_sample_grad_norms(model, inputs, chunk_size=10)
    original = gradnorm._hooked_norms
    sizes: list[int] = []

    def small_memory(model, chunk, reduction, loss):
        sizes.append(chunk.shape[0])
        if chunk.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(model, chunk, reduction, loss)

    monkeypatch.setattr(gradnorm, "_hooked_norms", small_memory)
    got = per_sample_grad_norms(model, inputs, chunk_size=10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0.0)
    assert sizes[:3] == [10, 5, 2]

    def always_oom(model, chunk, reduction, loss):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(gradnorm, "_hooked_norms", always_oom)
    with pytest.raises(torch.OutOfMemoryError):
        per_sample_grad_norms(model, inputs, chunk_size=4)


def test_indices_with_a_transform_score_like_the_gathered_images(model, dataset) -> None:
    """The strategies pass candidate indices and gather + normalize one chunk at a time."""
    indices = torch.tensor([5, 40, 3, 17, 60, 22, 9])
    gathered = per_sample_grad_norms(model, dataset.normalize(dataset.train.images[indices]), chunk_size=3)
    lazily = per_sample_grad_norms(
        model, indices, chunk_size=3, transform=lambda chunk: dataset.normalize(dataset.train.images[chunk])
    )
    assert torch.equal(lazily, gathered)


def test_a_gradient_norm_query_calls_the_engine_once(model, dataset, monkeypatch) -> None:
    from lplgrad.strategies import QueryContext, create_strategy, gradnorm_sampling

    calls = []
    original = gradnorm_sampling.per_sample_grad_norms

    def counting(*args, **kwargs):
        calls.append(args[1].numel())
        return original(*args, **kwargs)

    monkeypatch.setattr(gradnorm_sampling, "per_sample_grad_norms", counting)
    context = QueryContext(model, dataset, torch.arange(20, 60), torch.arange(20), torch.Generator(), batch_size=8)
    create_strategy("ent-gradnorm").select(context, 5)
    assert calls == [40]  # all candidates in one call, not one per batch of 8
