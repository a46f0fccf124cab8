"""The training phase: how w_aux's ranking loss reaches (and stops reaching) the backbone, and the schedule."""

import copy
import math

import pytest
import torch

from lplgrad.config.schema import TrainConfig
from lplgrad.models import LossPredictionModule, ResNet18
from lplgrad.train.fit import fit, make_optimizer, planned_epochs, steps_per_epoch
from tests.helpers import make_dataset

# Also run by README's test command under AVX2 kernels (pytest -m determinism), see pyproject.toml.
pytestmark = pytest.mark.determinism


def models() -> tuple[ResNet18, LossPredictionModule]:
    torch.manual_seed(0)
    model = ResNet18(4, width=4)
    return model, LossPredictionModule(model.feature_channels, hidden=8)


def trained(detach_fraction: float, with_aux_model: bool) -> tuple[dict, dict]:
    model, aux_model = models()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, detach_fraction=detach_fraction)
    fit(model, make_dataset(), torch.arange(48), config, seed=3, aux_model=aux_model if with_aux_model else None)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(aux_model.state_dict())


def test_features_detached_from_the_start_leave_the_backbone_as_plain_cross_entropy_training() -> None:
    """detach_fraction = 0: w_aux trains on detached features, so the backbone sees exactly the CE gradients
    (same data order, same augmentations) and ends bit-for-bit where training without w_aux ends."""
    plain, _ = trained(0.0, with_aux_model=False)
    detached, aux_model_after = trained(0.0, with_aux_model=True)
    for name, value in plain.items():
        torch.testing.assert_close(detached[name], value, rtol=0, atol=0)
    _, aux_model_before = models()
    assert any(not torch.equal(aux_model_after[k], v) for k, v in aux_model_before.state_dict().items())


def test_the_ranking_loss_shapes_the_backbone_until_the_detach_point() -> None:
    plain, _ = trained(0.0, with_aux_model=False)
    joint, _ = trained(1.0, with_aux_model=True)
    assert not torch.equal(joint["stem.0.weight"], plain["stem.0.weight"])
    assert not torch.equal(joint["stages.3.1.conv2.weight"], plain["stages.3.1.conv2.weight"])


def test_milestones_are_fractions_of_the_epochs() -> None:
    model, _ = models()
    config = TrainConfig(epochs=10, lr=1.0, milestones=[0.5, 0.8], gamma=0.1)
    optimizer, schedule = make_optimizer([model], config)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step()
        schedule.after_epoch()
    assert rates == pytest.approx([1.0] * 5 + [0.1] * 3 + [0.01] * 2)


def test_a_last_batch_of_one_image_is_skipped() -> None:
    """33 images in batches of 16 leave one image: on 8x8 inputs ResNet-18's last stage is 1x1, where
    BatchNorm cannot normalize a single sample; the epoch must still train on the other 32."""
    model, aux_model = models()
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    result = fit(model, make_dataset(), torch.arange(33), config, seed=0, aux_model=aux_model)
    assert math.isfinite(result.loss) and result.loss > 0
    assert result.steps == 2 * 2  # two batches of 16 per epoch; the image left over is skipped


def test_one_channel_batches_reach_the_model_in_nchw_strides() -> None:
    """A [B, 1, H, W] crop leaves augmentation with strides that are also channels_last; convolutions
    would then take oneDNN's channels_last kernels, which are not reproducible on AVX2 CPUs."""
    from lplgrad.data import augment_batch, conv_layout

    dataset = make_dataset()
    gray = dataset.train.images[:8, :1]
    augmented = augment_batch(gray, dataset.augment, torch.Generator().manual_seed(0))
    assert augmented.is_contiguous(memory_format=torch.channels_last)  # the trap
    batch = dataset.normalize(augmented)
    assert batch.stride() == torch.empty(batch.shape).stride()
    assert conv_layout(batch, channels_last=False) is batch
    assert conv_layout(dataset.normalize(dataset.train.images[:8]), channels_last=True).is_contiguous(
        memory_format=torch.channels_last
    )


def test_min_steps_adds_epochs_to_a_small_labeled_set_and_the_schedule_follows() -> None:
    config = TrainConfig(epochs=3, batch_size=16, min_steps=20, milestones=[0.5])
    assert steps_per_epoch(40, 16) == 3 and steps_per_epoch(33, 16) == 2
    assert planned_epochs(config, 40) == 7  # ceil(20 / 3)
    assert planned_epochs(config, 400) == 3  # 25 steps per epoch already exceed the floor
    model, _ = models()
    result = fit(model, make_dataset(), torch.arange(40), config, seed=0)
    assert (result.epochs, result.steps) == (7, 21)
    _, schedule = make_optimizer([model], config, result.epochs, 3)
    assert schedule.scheduler.milestones == {4: 1}  # round(0.5 * 7 epochs), not of the 3 asked for


def test_cosine_schedule_decays_to_zero_over_every_step() -> None:
    model, _ = models()
    config = TrainConfig(epochs=2, lr=0.1, schedule="cosine")
    optimizer, schedule = make_optimizer([model], config, epochs=2, per_epoch=5)
    rates = []
    for _ in range(2):
        for _ in range(5):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch()
    assert rates[0] == pytest.approx(0.1) and rates == sorted(rates, reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_label_smoothing_changes_the_main_loss_only() -> None:
    plain_model, _ = models()
    smooth_model, _ = models()
    plain = fit(plain_model, make_dataset(), torch.arange(48), TrainConfig(epochs=1, batch_size=16), seed=0)
    smooth = fit(
        smooth_model,
        make_dataset(),
        torch.arange(48),
        TrainConfig(epochs=1, batch_size=16, label_smoothing=0.1),
        seed=0,
    )
    assert smooth.loss != plain.loss and smooth.steps == plain.steps
