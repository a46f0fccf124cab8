"""Self-supervised image features learned on the unlabeled pool itself (``lplgrad embed``): SimCLR."""

from lplgrad.selfsup.simclr import SimCLRConfig, embed_images, train_simclr

__all__ = ["SimCLRConfig", "embed_images", "train_simclr"]
