"""Data: the Dataset type (uint8 tensors on the device), batched augmentation, and the loaders
registered by name with their paper training defaults (digits, CIFAR, SVHN, Caltech-101, image folders)."""

from lplgrad.data.augment import Augment, augment_batch, conv_layout
from lplgrad.data.dataset import Dataset, Split, channel_stats
from lplgrad.data.loaders import dataset_defaults, list_datasets, load_dataset, register_dataset

__all__ = [
    "Augment",
    "Dataset",
    "Split",
    "augment_batch",
    "channel_stats",
    "conv_layout",
    "dataset_defaults",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
