from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lplgrad import imagefolder
from lplgrad.config import DataConfig
from lplgrad.datasets import load_dataset
from lplgrad.errors import UserError


def write_images(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_train_test_layout_and_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "folder"
    write_images(root / "train", {"cat": 5, "dog": 4})
    write_images(root / "test", {"cat": 2, "dog": 3}, seed=1)
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(root / "train" / "dog" / "gray.png")  # grayscale
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    config = DataConfig(name=f"imagefolder:{root}", cache_dir=str(tmp_path / "cache"))

    dataset = load_dataset(config)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.train.images.shape == (10, 3, 12, 12)
    assert dataset.train.labels.tolist() == [0] * 5 + [1] * 5
    assert dataset.test.labels.tolist() == [0, 0, 1, 1, 1]
    assert [Path(p).name for p in dataset.skipped_files] == ["broken.png"]
    pixels = np.asarray(Image.open(root / "train" / "cat" / "0.png"))
    assert (dataset.train.images[0].permute(1, 2, 0).numpy() == pixels).all()

    def no_decoding(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(imagefolder, "_decode", no_decoding)
    again = load_dataset(config)
    assert (again.train.images == dataset.train.images).all()
    assert again.skipped_files == dataset.skipped_files


def test_single_folder_is_split_by_a_stratified_holdout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "folder"
    write_images(root, {"a": 10, "b": 10, "c": 10})
    dataset = load_dataset(DataConfig(name=f"imagefolder:{root}", holdout=0.2, cache_dir=str(tmp_path / "c")))
    assert len(dataset.train) == 24 and len(dataset.test) == 6
    assert sorted(dataset.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_mixed_sizes_are_resized(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "folder"
    write_images(root / "train", {"a": 2}, size=20)
    write_images(root / "test", {"a": 2}, size=30)
    dataset = load_dataset(DataConfig(name=f"imagefolder:{root}", image_size=16, cache_dir=str(tmp_path / "c")))
    assert dataset.train.images.shape[-2:] == dataset.test.images.shape[-2:] == (16, 16)


def test_test_classes_missing_from_train_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "folder"
    write_images(root / "train", {"a": 2})
    write_images(root / "test", {"a": 1, "zebra": 1})
    with pytest.raises(UserError, match="classes the training split lacks: zebra"):
        load_dataset(DataConfig(name=f"imagefolder:{root}", cache_dir=str(tmp_path / "c")))


def test_folder_without_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'empty'}", cache_dir=str(tmp_path / "c")))
