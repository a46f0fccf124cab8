"""The active learning core: the pool's bookkeeping, derived seeds, the labeled-set schedule, the
record of a round, and the one round function that the experiment and the labeling project share."""
