"""Main model (ResNet-18) and auxiliary loss prediction module."""

from lplgrad.models.loss_module import LossPredictionModule
from lplgrad.models.output import penultimate, split_output
from lplgrad.models.resnet import ModelOutput, ResNet18

__all__ = ["LossPredictionModule", "ModelOutput", "ResNet18", "penultimate", "split_output"]
