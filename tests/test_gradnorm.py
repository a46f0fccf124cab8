import pytest
import torch
from torch import nn

from lplgrad.gradnorm import per_sample_grad_norms, reduce_norms, score_loss


def naive_norms(model: nn.Module, inputs: torch.Tensor, reduction: str, loss: str) -> torch.Tensor:
    """Independent oracle: .backward() per sample into .grad fields of a copy of the model."""
    import copy

    clone = copy.deepcopy(model).eval()
    scores = []
    for x in inputs.split(1):
        clone.zero_grad(set_to_none=True)
        out = clone(x)
        logits = out[0] if isinstance(out, tuple) else out
        score_loss(logits, loss).sum().backward()  # type: ignore[arg-type]
        norms = [p.grad.norm() for p in clone.parameters() if p.grad is not None]
        value = sum(norms) if reduction == "layer_sum" else torch.stack(norms).pow(2).sum().sqrt()
        scores.append(torch.as_tensor(value))
    return torch.stack(scores)


@pytest.mark.parametrize("reduction", ["layer_sum", "global"])
@pytest.mark.parametrize("loss", ["entropy", "expected"])
def test_matches_one_backward_per_sample(model, reduction: str, loss: str) -> None:  # type: ignore[no-untyped-def]
    inputs = torch.randn(5, 3, 8, 8)
    got = per_sample_grad_norms(model, inputs, reduction=reduction, loss=loss)  # type: ignore[arg-type]
    want = naive_norms(model, inputs, reduction, loss)
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_entropy_and_expected_losses_differ(model) -> None:  # type: ignore[no-untyped-def]
    inputs = torch.randn(3, 3, 8, 8)
    a = per_sample_grad_norms(model, inputs, loss="entropy")
    b = per_sample_grad_norms(model, inputs, loss="expected")
    assert not torch.allclose(a, b)


def test_model_weights_grads_and_mode_are_untouched(model) -> None:  # type: ignore[no-untyped-def]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per_sample_grad_norms(model, torch.randn(4, 3, 8, 8))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_reductions_by_hand() -> None:
    squared = [torch.tensor([9.0, 0.0]), torch.tensor([16.0, 4.0])]
    assert reduce_norms(squared, "layer_sum").tolist() == [7.0, 2.0]
    assert reduce_norms(squared, "global").tolist() == [5.0, 2.0]
    with pytest.raises(ValueError):
        reduce_norms(squared, "max")  # type: ignore[arg-type]
