from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lplgrad.config.schema import DataConfig
from lplgrad.data import imagefolder
from lplgrad.data.loaders import load_dataset
from lplgrad.errors import UserError
from tests.helpers import write_images


def test_train_test_layout_and_cache(tmp_path, monkeypatch) -> None:
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

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    again = load_dataset(config)
    assert (again.train.images == dataset.train.images).all()
    assert again.skipped_files == dataset.skipped_files


def test_single_folder_is_split_by_a_stratified_holdout(tmp_path) -> None:
    root = tmp_path / "folder"
    write_images(root, {"a": 10, "b": 10, "c": 10})
    dataset = load_dataset(DataConfig(name=f"imagefolder:{root}", holdout=0.2, cache_dir=str(tmp_path / "c")))
    assert len(dataset.train) == 24 and len(dataset.test) == 6
    assert sorted(dataset.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_mixed_sizes_are_resized(tmp_path) -> None:
    root = tmp_path / "folder"
    write_images(root / "train", {"a": 2, "b": 1}, size=20)
    write_images(root / "test", {"a": 2}, size=30)
    dataset = load_dataset(DataConfig(name=f"imagefolder:{root}", image_size=16, cache_dir=str(tmp_path / "c")))
    assert dataset.train.images.shape[-2:] == dataset.test.images.shape[-2:] == (16, 16)


def test_test_classes_missing_from_train_are_refused(tmp_path) -> None:
    root = tmp_path / "folder"
    write_images(root / "train", {"a": 2})
    write_images(root / "test", {"a": 1, "zebra": 1})
    with pytest.raises(UserError, match="classes the training split lacks: zebra"):
        load_dataset(DataConfig(name=f"imagefolder:{root}", cache_dir=str(tmp_path / "c")))


def test_one_class_is_refused(tmp_path) -> None:
    write_images(tmp_path / "folder", {"only": 6})
    with pytest.raises(UserError, match="has 1 class folder \\(only\\); classification needs at least two"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'folder'}", cache_dir=str(tmp_path / "c")))


def test_folder_without_images(tmp_path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'empty'}", cache_dir=str(tmp_path / "c")))


def test_bad_and_unusual_files(tmp_path: Path) -> None:
    """Corrupt files are skipped and listed; unusual modes are converted correctly."""
    import io

    root = tmp_path / "folder"
    write_images(root / "train", {"a": 2, "b": 1, "c": 1})
    write_images(root / "test", {"a": 1, "b": 1, "c": 1})
    good = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(good, format="JPEG")
    (root / "train" / "a" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "train" / "a" / "text.png").write_text("this is not a picture")
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(root / "train" / "a" / "cmyk.jpg")  # pure red
    Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)).save(root / "train" / "b" / "white16.png")
    Image.fromarray(np.full((12, 12), 32768, dtype=np.uint16)).save(root / "train" / "b" / "gray16.png")
    Image.new("RGBA", (12, 12), (10, 20, 30, 0)).save(root / "train" / "b" / "rgba.png")
    Image.new("RGB", (3000, 2000), (0, 0, 255)).save(root / "train" / "c" / "huge.jpg")
    (root / "train" / "d").mkdir()
    (root / "train" / "d" / "only-broken.png").write_bytes(b"\x89PNG broken")

    dataset = load_dataset(DataConfig(name=f"imagefolder:{root}", image_size=12, cache_dir=str(tmp_path / "c")))
    skipped = sorted(Path(p).name for p in dataset.skipped_files)
    assert skipped == ["empty.jpg", "only-broken.png", "text.png", "truncated.jpg"]
    images = {
        name: dataset.train.images[i]
        for i, name in enumerate(
            ["0.png", "1.png", "cmyk.jpg", "0.png(b)", "gray16.png", "rgba.png", "white16.png", "0.png(c)", "huge.jpg"]
        )
    }
    assert dataset.train.images.shape == (9, 3, 12, 12)
    red = images["cmyk.jpg"].float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert (images["white16.png"] == 255).all()
    assert abs(int(images["gray16.png"][0, 0, 0]) - 128) <= 1
    assert images["rgba.png"][:, 0, 0].tolist() == [10, 20, 30]
    blue = images["huge.jpg"].float().mean(dim=(1, 2))
    assert blue[2] > 200 and blue[0] < 60
    assert dataset.classes == ["a", "b", "c", "d"]  # d is reported empty (a warning), kept for class ids


def test_the_cache_follows_the_class_list(tmp_path) -> None:
    # A test folder takes the training folder's class list; a new list must not reuse old label indices.
    write_images(tmp_path / "folder", {"a": 2, "b": 3})
    first = imagefolder.decode_folder(tmp_path / "folder", classes=["a", "b"], cache_dir=tmp_path / "cache")
    # Same files in the same order, but "b" is now class 2 (the training folder gained a class "c").
    second = imagefolder.decode_folder(tmp_path / "folder", classes=["a", "c", "b"], cache_dir=tmp_path / "cache")
    assert first.labels.tolist() == [0, 0, 1, 1, 1]
    assert second.labels.tolist() == [0, 0, 2, 2, 2]
