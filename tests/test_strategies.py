"""Contract tests over every registered strategy, plus the numerics behind them."""

import pytest
import torch

from lplgrad.strategies import QueryContext, create_strategy, list_strategies, top_k
from lplgrad.strategies.coreset import k_center_greedy

PAPER_STRATEGIES = {"random", "entropy", "learning-loss", "ent-gradnorm", "coreset", "lplgrad"}


def make_context(model, loss_module, dataset, seed: int = 0) -> QueryContext:  # type: ignore[no-untyped-def]
    return QueryContext(
        model=model,
        dataset=dataset,
        candidates=torch.arange(10, 50),
        labeled=torch.arange(0, 10),
        generator=torch.Generator().manual_seed(seed),
        loss_module=loss_module,
        batch_size=16,
    )


def test_every_paper_method_is_registered() -> None:
    assert PAPER_STRATEGIES | {"margin", "least-confidence", "expected-gradnorm"} <= set(list_strategies())


@pytest.mark.parametrize("name", list_strategies())
def test_contract(name: str, model, loss_module, dataset) -> None:  # type: ignore[no-untyped-def]
    strategy = create_strategy(name, reduction="global")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    selection = strategy.select(make_context(model, loss_module, dataset), 7)
    indices = selection.indices
    assert indices.shape == (7,) and indices.dtype == torch.long
    assert indices.unique().numel() == 7
    assert set(indices.tolist()) <= set(range(10, 50))
    if selection.scores is not None:
        assert selection.scores.shape == (7,)

    again = strategy.select(make_context(model, loss_module, dataset), 7)
    assert torch.equal(indices, again.indices), "same seed must give the same selection"

    assert model.training, "a strategy must not change the model's mode"
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} changed {key}"

    with pytest.raises(ValueError, match="cannot select"):
        strategy.select(make_context(model, loss_module, dataset), 41)


def test_score_based_strategies_pick_the_highest_scores(model, loss_module, dataset) -> None:  # type: ignore[no-untyped-def]
    ctx = make_context(model, loss_module, dataset)
    for name in ["entropy", "lplgrad", "learning-loss"]:
        strategy = create_strategy(name)
        scores = strategy.score(ctx)
        chosen = strategy.select(ctx, 5)
        assert torch.equal(chosen.scores, scores.topk(5).values)  # type: ignore[arg-type]


def test_uses_loss_module_is_part_of_the_strategy() -> None:
    with_aux = {n for n in list_strategies() if create_strategy(n).uses_loss_module}
    assert with_aux == {"lplgrad", "learning-loss"}


def test_gradient_strategies_record_their_reduction() -> None:
    assert create_strategy("lplgrad").reduction == "layer_sum"  # type: ignore[attr-defined]
    assert create_strategy("ent-gradnorm", reduction="global").reduction == "global"  # type: ignore[attr-defined]


def test_top_k_breaks_ties_by_lower_index_and_puts_nan_last() -> None:
    candidates = torch.tensor([9, 4, 7, 2])
    scores = torch.tensor([1.0, float("nan"), 1.0, 0.5])
    assert top_k(candidates, scores, 3).indices.tolist() == [7, 9, 2]


def test_k_center_picks_the_farthest_point_first() -> None:
    centers = torch.tensor([[0.0, 0.0]])
    points = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, 3.0], [9.0, 0.5]])
    positions, scores = k_center_greedy(points, centers, 2)
    # First the farthest from the origin (10, 0); then (0, 3), which is now farthest from both.
    assert positions.tolist() == [1, 2]
    assert scores.tolist() == pytest.approx([10.0, 3.0])


def test_k_center_never_repeats_coinciding_points() -> None:
    points = torch.zeros(4, 3)
    positions, _ = k_center_greedy(points, torch.zeros(1, 3), 4)
    assert sorted(positions.tolist()) == [0, 1, 2, 3]
