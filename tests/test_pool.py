import pytest
import torch

from lplgrad.core.pool import Pool


def test_label_and_query_indices() -> None:
    pool = Pool(10)
    pool.label(torch.tensor([3, 1]), 0)
    pool.label(torch.tensor([7]), 1)
    assert pool.num_labeled == 3
    assert pool.labeled_indices().tolist() == [1, 3, 7]
    assert pool.unlabeled_indices().tolist() == [0, 2, 4, 5, 6, 8, 9]
    assert pool.labeled_at[[1, 3, 7, 0]].tolist() == [0, 0, 1, -1]


@pytest.mark.parametrize(
    ("indices", "error"),
    [([10], IndexError), ([-1], IndexError), ([2, 2], ValueError), ([1], ValueError)],
)
def test_bad_labels_are_refused_and_leave_the_pool_unchanged(indices: list[int], error: type) -> None:
    pool = Pool(10)
    pool.label(torch.tensor([1]), 0)
    before = pool.labeled_at.clone()
    with pytest.raises(error):
        pool.label(torch.tensor(indices), 1)
    assert torch.equal(pool.labeled_at, before)
