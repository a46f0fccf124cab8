import pytest
import torch
from torch import nn

from lplgrad.models import LossPredictionModule, ModelOutput, ResNet18, penultimate


@pytest.mark.parametrize(
    ("stem", "size", "spatial"),
    [("cifar", 32, [32, 16, 8, 4]), ("imagenet", 64, [16, 8, 4, 2])],
)
def test_resnet_returns_logits_and_four_stages(stem: str, size: int, spatial: list[int]) -> None:
    model = ResNet18(num_classes=7, in_channels=3, width=4, stem=stem)
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7)
    assert [f.shape[1] for f in out.features] == [4, 8, 16, 32] == model.feature_channels
    assert [f.shape[-1] for f in out.features] == spatial


def test_full_width_resnet18_has_the_standard_parameter_count() -> None:
    # The CIFAR ResNet-18 of the Learning-Loss / LPLgrad code: 11,173,962 parameters for 10 classes.
    model = ResNet18(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


@pytest.mark.parametrize(("stem", "size"), [("cifar", 32), ("imagenet", 64)])
def test_aux_model_predicts_one_loss_per_sample(stem: str, size: int) -> None:
    model = ResNet18(num_classes=3, width=4, stem=stem)
    module = LossPredictionModule(model.feature_channels)
    predicted = module(model(torch.randn(5, 3, size, size)).features)
    assert predicted.shape == (5,)
    assert len(module.branches) == 4 and module.branches[0].out_features == 128


def test_aux_model_for_a_user_model() -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            f = torch.relu(self.conv(x))
            return self.fc(penultimate([f])), [f]

    model = Small().train()
    module = LossPredictionModule.for_model(model, torch.randn(1, 1, 8, 8), hidden=5)
    assert model.training, "building the module must restore the model's mode"
    assert module(model(torch.randn(3, 1, 8, 8))[1]).shape == (3,)


def test_aux_model_refuses_a_model_without_features() -> None:
    with pytest.raises(ValueError, match="only logits"):
        LossPredictionModule.for_model(nn.Linear(4, 2), torch.randn(1, 4))
