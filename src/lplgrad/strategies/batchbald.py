"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): a batch chosen by the mutual information
between the joint labels of the whole batch and the weights, greedily, so near-duplicates that
BALD would all pick add almost nothing after the first.

With T weight samples w_t (MC dropout on the classifier's input, one mask per pass shared by
every image, as a weight sample must be) and p_t(y | x) the head's softmax under mask t,
    a({x_1..x_n}) = H(y_1..y_n) - sum_i mean_t H(p_t(y_i | x_i))               (Eq. 8)
    P(y_1..y_n) = mean_t prod_i p_t(y_i | x_i)
Each step adds the candidate that maximises a(chosen + x). The joint entropy sums over every
configuration of the chosen labels while there are at most ``configurations`` of them (C^(n-1));
past that it is estimated from that many configurations sampled from the joint (draw t, then each
label from p_t), weighted by importance, as the paper's Section 3.3 does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lplgrad.errors import UserError
from lplgrad.strategies.base import QueryContext, Selection, Strategy, check_k
from lplgrad.strategies.registry import register_strategy
from lplgrad.train.inference import predict_all

CHUNK = 256  # candidates whose [configurations, C] joints are held at once


def shared_mask_probabilities(
    features: Tensor, head: nn.Module, dropout: float, passes: int, generator: torch.Generator
) -> Tensor:
    """p_t(y | x) [T, N, C] (float64): ``head`` on ``features`` [N, D] under one dropout mask per pass."""
    probabilities = []
    with torch.no_grad():
        for _ in range(passes):
            keep = (torch.rand(features.shape[1], generator=generator) >= dropout).to(features.device)
            dropped = features * keep / (1.0 - dropout) if dropout > 0 else features
            probabilities.append(torch.softmax(head(dropped).double(), dim=1))
    return torch.stack(probabilities)


def _entropy_terms(joint: Tensor) -> Tensor:
    """-P log P element-wise, 0 where P = 0."""
    return -torch.special.xlogy(joint, joint)


def joint_entropies(chosen: Tensor, weights: Tensor, probabilities: Tensor) -> Tensor:
    """H(y_chosen, y_x) [N] for every candidate x. ``chosen`` [M, T] holds P(configuration m | w_t)
    of the chosen labels; ``weights`` [M] is 1 for enumerated configurations and 1 / (M P(m)) for
    sampled ones (importance sampling of -sum P log P)."""
    passes, count, _ = probabilities.shape
    out = torch.empty(count, dtype=torch.float64)
    for start in range(0, count, CHUNK):
        part = probabilities[:, start : start + CHUNK]  # [T, n, C]
        joint = torch.einsum("mt,tnc->mnc", chosen, part) / passes  # P(configuration m, y_x = c)
        out[start : start + CHUNK] = (_entropy_terms(joint).sum(2) * weights[:, None]).sum(0)
    return out


def _sample_configurations(
    probabilities: Tensor, picked: list[int], samples: int, generator: torch.Generator
) -> Tensor:
    """[samples, T]: P(sampled labels of ``picked`` | w_t) for configurations drawn from the joint."""
    passes = probabilities.shape[0]
    drawn_pass = torch.randint(passes, (samples,), generator=generator)
    chosen = torch.ones(samples, passes, dtype=torch.float64)
    for index in picked:
        label = torch.multinomial(probabilities[drawn_pass, index], 1, generator=generator).squeeze(1)  # [samples]
        chosen *= probabilities[:, index, label].T  # P(label_m | w_t) for every pass t
    return chosen


def batchbald_picks(
    probabilities: Tensor, k: int, configurations: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Greedy BatchBALD over p_t(y | x) [T, N, C]: positions [k] and each pick's gain in joint MI."""
    passes, count, classes = probabilities.shape
    probabilities = probabilities.cpu().double()
    conditional = _entropy_terms(probabilities).sum(2).mean(0)  # mean_t H(p_t(y | x)) [N]
    chosen = torch.ones(1, passes, dtype=torch.float64)  # the empty configuration
    weights = torch.ones(1, dtype=torch.float64)
    picked: list[int] = []
    gains, previous, conditional_sum = [], 0.0, 0.0
    available = torch.ones(count, dtype=torch.bool)
    for _ in range(k):
        information = joint_entropies(chosen, weights, probabilities) - conditional_sum - conditional
        best = int(torch.argmax(information.masked_fill(~available, float("-inf"))))
        gains.append(float(information[best]) - previous)
        previous, conditional_sum = float(information[best]), conditional_sum + float(conditional[best])
        picked.append(best)
        available[best] = False
        if chosen.shape[0] * classes <= configurations:  # every configuration, exactly
            chosen = (chosen[:, None, :] * probabilities[:, best, :].T[None]).reshape(-1, passes)
            weights = torch.ones(chosen.shape[0], dtype=torch.float64)
        else:
            chosen = _sample_configurations(probabilities, picked, configurations, generator)
            weights = 1.0 / (configurations * chosen.mean(1).clamp_min(1e-300))
    return torch.tensor(picked), torch.tensor(gains, dtype=torch.float64)


@register_strategy
@dataclass(frozen=True)
class BatchBald(Strategy):
    """BatchBALD: greedy joint mutual information of the batch (MC dropout before the classifier).

    Cost per pick: configurations x passes x candidates x classes; with the defaults and 10,000
    candidates of 10 classes a pick is about 2e9 multiply-adds, so keep k (or the candidate
    subset) small on a CPU."""

    name = "batchbald"
    color = "#c49c94"
    dropout: float = 0.5
    passes: int = 20
    configurations: int = 1000

    def select(self, ctx: QueryContext, k: int) -> Selection:
        check_k(k, ctx.candidates.numel())
        head = getattr(ctx.model, "fc", None)
        if not isinstance(head, nn.Module):
            raise UserError("batchbald needs a model whose classifier is its `fc` layer (lplgrad's ResNet18)")
        candidates = ctx.candidates.cpu().sort().values
        features = predict_all(ctx.model, ctx.dataset, candidates, ctx.batch_size, embeddings=True)["embeddings"]
        probabilities = shared_mask_probabilities(features, head, self.dropout, self.passes, ctx.generator)
        positions, gains = batchbald_picks(probabilities, k, self.configurations, ctx.generator)
        return Selection(candidates[positions], gains.float())
