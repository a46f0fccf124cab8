"""The labeled-set size at each training round: initial, initial + query, ... up to the budget."""

from __future__ import annotations

import math

from lplgrad.errors import UserError


def labeled_schedule(initial_size: int, query_size: int, rounds: int, budget: int | None = None) -> list[int]:
    """Sizes [B, B + K, ...]: ``rounds`` of them, or, with a budget A, until A (the last query is
    smaller if A - B is not a multiple of K)."""
    if budget is not None:
        rounds = 1 + math.ceil((budget - initial_size) / query_size)
        return [min(initial_size + r * query_size, budget) for r in range(rounds)]
    return [initial_size + r * query_size for r in range(rounds)]


def check_fits(sizes: list[int], pool_size: int, by_budget: bool) -> None:
    """The schedule must fit the training pool; the message names what to change."""
    if sizes[0] > pool_size:
        raise UserError(f"initial set ({sizes[0]}) is larger than the training pool ({pool_size} images)")
    if sizes[-1] > pool_size:
        if by_budget:
            raise UserError(f"budget ({sizes[-1]}) is larger than the training pool ({pool_size} images)")
        query = sizes[1] - sizes[0]
        raise UserError(
            f"{len(sizes)} rounds of {query} after an initial {sizes[0]} need {sizes[-1]} images; "
            f"the training pool has {pool_size}"
        )
