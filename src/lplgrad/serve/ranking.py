"""The prediction score lplgrad gives Label Studio: a priority, so that sorting by it puts lplgrad's
query order first.

Label Studio's Data Manager sorts a column descending with the highest value on top, and its
"Prediction score" column is the mean score of a task's predictions from the backend's current
model version. So a higher score must mean "label this sooner":
- the images of the newest round's batch score in (1, 2], in rank order: rank 1 of k scores 2,
  rank k scores 1 + 1/k (the strategy's choice, lplgrad's "label these next");
- every other image scores in [0, 1]: the newest model's uncertainty about it, least confidence
  scaled to [0, 1] (``(1 - p_max) * C / (C - 1)``: 1 for a uniform guess, 0 for certainty), so
  after the batch come the images the model is least sure of.
Any batch image is thus above any other, and the two ranges never meet.
"""

from __future__ import annotations

from collections.abc import Sequence


def batch_score(rank: int, size: int) -> float:
    """The score of the batch image at ``rank`` (1-based) of a batch of ``size``: in (1, 2]."""
    if not 1 <= rank <= size:
        raise ValueError(f"rank {rank} is outside a batch of {size}")
    return 1.0 + (size - rank + 1) / size


def uncertainty(probabilities: Sequence[float]) -> float:
    """Least confidence scaled to [0, 1]: 0 when the model is certain, 1 when it guesses uniformly."""
    classes = len(probabilities)
    if classes < 2:
        raise ValueError("uncertainty needs at least two classes")
    scaled = (1.0 - max(probabilities)) * classes / (classes - 1)
    return min(1.0, max(0.0, scaled))


def priority(rank: int | None, size: int, probabilities: Sequence[float] | None) -> float | None:
    """A task's score: its batch score if the newest batch holds it, else its uncertainty under the
    newest model, else None (no model and not in the batch: nothing to say)."""
    if rank is not None:
        return batch_score(rank, size)
    return None if probabilities is None else uncertainty(probabilities)
