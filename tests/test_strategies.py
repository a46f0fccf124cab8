"""Contract tests over every registered strategy, plus the numerics behind them."""

import pytest
import torch

from lplgrad.errors import UserError
from lplgrad.strategies import QueryContext, create_strategy, list_strategies, top_k
from lplgrad.strategies.base import QuerySizeError
from lplgrad.strategies.coreset import k_center_greedy

PAPER_STRATEGIES = {"random", "entropy", "learning-loss", "ent-gradnorm", "coreset", "lplgrad"}


# Shuffled and non-contiguous, so a strategy that returns positions in this list instead of
# absolute image indices, or that assumes sorted candidates, fails.
# The values (40..63) and the positions (0..23) never overlap.
CANDIDATES = torch.randperm(24, generator=torch.Generator().manual_seed(1)) + 40
LABELED = torch.tensor([0, 1, 2, 39])


def make_context(model, aux_model, dataset, seed: int = 0) -> QueryContext:
    return QueryContext(
        model=model,
        dataset=dataset,
        candidates=CANDIDATES,
        labeled=LABELED,
        generator=torch.Generator().manual_seed(seed),
        aux_model=aux_model,
        batch_size=16,
    )


def test_every_paper_method_is_registered() -> None:
    assert PAPER_STRATEGIES | {"margin", "least-confidence", "expected-gradnorm"} <= set(list_strategies())


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", list_strategies())
def test_contract(name: str, model, aux_model, dataset) -> None:
    strategy = create_strategy(name)
    aux = aux_model if strategy.uses_aux_model else None  # as the loop passes it
    model.train()
    before, aux_before = state(model), state(aux_model)

    selection = strategy.select(make_context(model, aux, dataset), 7)
    indices = selection.indices
    assert indices.shape == (7,) and indices.dtype == torch.long
    assert indices.unique().numel() == 7
    assert set(indices.tolist()) <= set(CANDIDATES.tolist()), "absolute indices from the candidates"
    if selection.scores is not None:
        assert selection.scores.shape == (7,)
        try:
            scores = strategy.score(make_context(model, aux, dataset)).tolist()
            all_scores = dict(zip(CANDIDATES.tolist(), scores, strict=True))
        except NotImplementedError:  # strategies that only implement select (coreset)
            all_scores = None
        if all_scores is not None:
            assert selection.scores.tolist() == pytest.approx([all_scores[i] for i in indices.tolist()])

    again = strategy.select(make_context(model, aux, dataset), 7)
    assert torch.equal(indices, again.indices), "same seed must give the same selection"

    assert model.training, "a strategy must not change the model's mode"
    assert all(p.grad is None for p in [*model.parameters(), *aux_model.parameters()])
    for key, value in state(model).items():
        assert torch.equal(value, before[key]), f"{name} changed {key}"
    for key, value in state(aux_model).items():
        assert torch.equal(value, aux_before[key]), f"{name} changed w_aux's {key}"

    with pytest.raises(QuerySizeError, match="cannot select 25 images from 24 candidates"):
        strategy.select(make_context(model, aux, dataset), 25)
    with pytest.raises(QuerySizeError, match="query size must be >= 1"):
        strategy.select(make_context(model, aux, dataset), 0)


def test_create_strategy_refuses_an_option_the_strategy_does_not_take() -> None:
    with pytest.raises(UserError, match="strategy 'random' takes no option reduction; its options: none"):
        create_strategy("random", reduction="global")
    with pytest.raises(UserError, match="takes no option reductoin; its options: reduction, score_bf16"):
        create_strategy("lplgrad", reductoin="global")


def test_score_based_strategies_pick_the_highest_scores(model, aux_model, dataset) -> None:
    ctx = make_context(model, aux_model, dataset)
    for name in ["entropy", "lplgrad", "learning-loss"]:
        strategy = create_strategy(name)
        scores = strategy.score(ctx)
        assert scores.shape == CANDIDATES.shape
        chosen = strategy.select(ctx, 5)
        assert torch.equal(chosen.scores, scores.topk(5).values)


def test_uses_aux_model_is_part_of_the_strategy() -> None:
    with_aux = {n for n in list_strategies() if create_strategy(n).uses_aux_model}
    assert with_aux == {"lplgrad", "learning-loss", "lplgrad-diverse"}


def test_gradient_strategies_record_their_reduction() -> None:
    assert create_strategy("lplgrad").reduction == "layer_sum"
    assert create_strategy("ent-gradnorm", reduction="global").reduction == "global"


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


def test_badge_distances_from_factors_equal_the_formed_gradient_embeddings() -> None:
    from lplgrad.strategies.badge import _squared_distances, gradient_factors

    generator = torch.Generator().manual_seed(0)
    logits, features = torch.randn(6, 4, generator=generator), torch.randn(6, 5, generator=generator)
    a, h = gradient_factors(logits, features)
    formed = (a[:, :, None] * h[:, None, :]).flatten(1)  # g_i = a_i outer h_i, [6, 20]
    norm2 = (a * a).sum(1) * (h * h).sum(1)
    for center in range(6):
        expected = ((formed - formed[center]) ** 2).sum(1)
        assert torch.allclose(_squared_distances(a, h, norm2, center), expected, atol=1e-5)


def test_badge_spreads_its_picks_over_separate_groups() -> None:
    from lplgrad.strategies.badge import kmeans_pp

    # Three tight groups of embeddings far apart: three picks take one from each group.
    centers = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    h = centers.repeat_interleave(5, 0) + 0.01 * torch.randn(15, 3, generator=torch.Generator().manual_seed(1))
    a = torch.ones(15, 2)
    for seed in range(5):
        positions, _ = kmeans_pp(a, h, 3, torch.Generator().manual_seed(seed))
        assert sorted((positions // 5).tolist()) == [0, 1, 2]


def test_bald_is_zero_for_a_deterministic_model_and_positive_with_dropout() -> None:
    from lplgrad.strategies.bald import mutual_information

    head = torch.nn.Linear(8, 3)
    features = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    deterministic = mutual_information(features, head, 0.0, 10, torch.Generator().manual_seed(0))
    assert torch.allclose(deterministic, torch.zeros(10), atol=1e-6)
    assert (mutual_information(features, head, 0.5, 10, torch.Generator().manual_seed(0)) > 0).all()


def disagreeing_passes(seed: int = 0, count: int = 6, passes: int = 8) -> torch.Tensor:
    """p_t(y | x) [T, N, 3]: random, confident, different predictions per pass."""
    logits = 3 * torch.randn(passes, count, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.softmax(logits, dim=2)


def test_batchbald_of_one_image_is_bald_and_zero_without_disagreement() -> None:
    from lplgrad.strategies.batchbald import batchbald_picks

    probabilities = disagreeing_passes()
    mean = probabilities.mean(0)
    bald = -(mean * mean.log()).sum(1) + (probabilities * probabilities.log()).sum(2).mean(0)
    positions, gains = batchbald_picks(probabilities, 1, 1000, torch.Generator())
    assert positions.tolist() == [int(bald.argmax())] and gains[0] == pytest.approx(float(bald.max()))
    same = probabilities[:1].expand(8, -1, -1)  # every pass agrees: a deterministic model
    assert torch.allclose(batchbald_picks(same, 3, 1000, torch.Generator())[1], torch.zeros(3, dtype=torch.float64))


def test_batchbald_takes_one_copy_of_a_duplicate_where_bald_takes_both() -> None:
    from lplgrad.strategies.batchbald import batchbald_picks

    probabilities = disagreeing_passes()
    mean = probabilities.mean(0)
    bald = -(mean * mean.log()).sum(1) + (probabilities * probabilities.log()).sum(2).mean(0)
    top = int(bald.argmax())
    with_copy = torch.cat([probabilities, probabilities[:, top : top + 1]], 1)  # image 6 repeats image `top`
    positions, gains = batchbald_picks(with_copy, 2, 1000, torch.Generator())
    assert positions[0] in (top, 6) and positions[1] not in (top, 6)  # BALD's two best are the two copies
    assert gains[1] > 0


def test_batchbald_sampled_joint_entropy_matches_the_enumerated_one() -> None:
    from lplgrad.strategies.batchbald import _sample_configurations, joint_entropies

    probabilities = disagreeing_passes(seed=3, count=5, passes=6)
    picked = [0, 1, 2]
    exact = torch.ones(1, 6, dtype=torch.float64)
    for index in picked:
        exact = (exact[:, None, :] * probabilities[:, index, :].T[None]).reshape(-1, 6)
    want = joint_entropies(exact, torch.ones(len(exact), dtype=torch.float64), probabilities)
    sampled = _sample_configurations(probabilities, picked, 20000, torch.Generator().manual_seed(0))
    weights = 1.0 / (len(sampled) * sampled.mean(1))
    assert torch.allclose(joint_entropies(sampled, weights, probabilities), want, rtol=0.02)


def test_batchbald_past_the_enumeration_limit_still_picks_an_informative_batch() -> None:
    from lplgrad.strategies.batchbald import batchbald_picks

    def joint_information(probabilities: torch.Tensor, picked: list[int]) -> float:
        """Eq. 8 by enumerating all 3^n label configurations."""
        chosen = torch.ones(1, probabilities.shape[0], dtype=torch.float64)
        for index in picked:
            chosen = (chosen[:, None, :] * probabilities[:, index, :].T[None]).reshape(-1, probabilities.shape[0])
        joint = chosen.mean(1)
        conditional = -(probabilities * probabilities.log()).sum(2).mean(0)[picked].sum()
        return float(-(joint * joint.log()).sum() - conditional)

    for seed in range(3):
        probabilities = disagreeing_passes(seed, count=10, passes=8)
        exact, _ = batchbald_picks(probabilities, 8, 10**6, torch.Generator())
        sampled, _ = batchbald_picks(probabilities, 8, 2000, torch.Generator().manual_seed(0))  # samples from pick 8
        assert sampled[:7].tolist() == exact[:7].tolist()
        best = joint_information(probabilities, exact.tolist())
        assert joint_information(probabilities, sampled.tolist()) > best - 0.02


def mixture(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs on the unit circle (100, 60 and 30 points) and their centres."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.tensor([0.0, 2.1, 4.2])
    centres = torch.stack([angles.cos(), angles.sin()], 1).double()
    sizes = [100, 60, 30]
    points = torch.cat(
        [c + 0.05 * torch.randn(n, 2, generator=generator).double() for c, n in zip(centres, sizes, strict=True)]
    )
    return points, centres


def test_typiclust_picks_the_dense_centres_of_a_mixture() -> None:
    from lplgrad.strategies.typical import typiclust_picks

    points, centres = mixture()
    positions, _ = typiclust_picks(points[:0], points, 3, torch.Generator().manual_seed(0))
    picked = points[positions]
    nearest_centre = torch.cdist(picked, centres).argmin(1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2]  # one per blob
    assert (torch.cdist(picked, centres).min(1).values < 0.05).all()  # near each blob's dense middle


def test_probcover_covers_the_most_points_first_and_skips_covered_ones() -> None:
    from lplgrad.strategies.typical import max_coverage_picks, purity_radius

    points, _ = mixture()
    pseudo = torch.tensor([0] * 100 + [1] * 60 + [2] * 30)
    delta = purity_radius(points, pseudo)
    assert 0.2 < delta < 1.7  # blobs are ~1.7 apart: pure balls stay inside one blob
    positions, gains = max_coverage_picks(points[:0], points, 3, delta, torch.Generator().manual_seed(0))
    assert positions[0] < 100 and gains[0] >= 90  # the big blob first, covering (nearly) all of it
    assert sorted((positions >= 100).long() + (positions >= 160).long()) == [0, 1, 2]
    # A labeled point in the big blob covers it already: the first pick goes elsewhere.
    positions, _ = max_coverage_picks(points[:1], points[1:], 1, delta, torch.Generator().manual_seed(0))
    assert positions[0] + 1 >= 100


def test_typiclust_and_probcover_read_embeddings_from_a_file(model, dataset, tmp_path) -> None:
    import numpy as np

    from lplgrad.errors import UserError

    # 64 training images in three groups of embeddings; the candidates (40..63) span all three.
    groups = torch.arange(64) % 3
    table = torch.nn.functional.one_hot(groups, 3).double() * 5 + 0.01 * torch.randn(64, 3, dtype=torch.float64)
    np.save(tmp_path / "emb.npy", table.numpy())
    context = QueryContext(model, dataset, CANDIDATES, torch.arange(0), torch.Generator().manual_seed(0))
    for name in ("typiclust", "probcover"):
        strategy = create_strategy(name, embeddings=str(tmp_path / "emb.npy"))
        picks = strategy.select(context, 3).indices
        assert sorted(groups[picks].tolist()) == [0, 1, 2], name
    np.save(tmp_path / "short.npy", table[:10].numpy())
    with pytest.raises(UserError, match="have 10 rows; expected 64"):
        create_strategy("typiclust", embeddings=str(tmp_path / "short.npy")).select(context, 3)
