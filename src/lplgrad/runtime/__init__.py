"""Where the code runs: several processes under torchrun (``distributed``), deterministic kernels,
atomic file writes and the folder lock that keeps two commands from writing one folder."""
