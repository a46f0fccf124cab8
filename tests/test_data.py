import torch

from lplgrad.data import Augment, augment_batch, channel_stats


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    images = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = augment_batch(images, Augment(crop_padding=2, flip=False), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_flip_only_mirrors_about_half_the_images() -> None:
    images = torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8)
    out = augment_batch(images, Augment(crop_padding=0, flip=True), torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], images[i].flip(2)) for i in range(200)]
    kept = [torch.equal(out[i], images[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_augmentation_is_seeded() -> None:
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    a = augment_batch(images, Augment(), torch.Generator().manual_seed(5))
    b = augment_batch(images, Augment(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_channel_stats_match_torch(dataset) -> None:
    images = dataset.train.images
    mean, std = channel_stats(images, chunk=10)
    x = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False), atol=1e-6)


def test_normalize(dataset) -> None:
    x = dataset.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(x, torch.full_like(x, 2.0))
