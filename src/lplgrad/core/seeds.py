"""Every random draw of lplgrad comes from a generator seeded here, by (seed, round, purpose).

A round can therefore be rerun or resumed bit for bit without saving any generator state, and no two
purposes share a stream (the candidate subset never moves because training drew more numbers).
"""

from __future__ import annotations

import numpy as np
import torch

# The purposes of derived seeds. Their values are part of every committed result: never renumber.
SEED_INIT = 0  # initial weights of w_main and w_aux
SEED_TRAIN = 1  # data order and augmentation of a round's training
SEED_SUBSET = 2  # the random candidate subset scored in a round
SEED_QUERY = 3  # the strategy's own randomness (random sampling, k-means++ seeding, MC-dropout masks)
SEED_INITIAL_SET = 4  # an experiment's random initial labeled set
SEED_ARTIFACTS = 5  # the test images kept for the t-SNE and confidence figures
SEED_HOLDOUT = 7  # a labeling project's labeled images held out to measure accuracy (6 was never used)
SEED_STOP = 8  # an experiment's stop set: the fixed pool images stopping criteria compare models on
SEED_FOLDS = 9  # the folds of ``lplgrad review``'s out-of-sample predictions


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, trial, round, purpose, ...), stable across Python versions."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
