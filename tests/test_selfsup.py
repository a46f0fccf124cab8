"""SimCLR (``lplgrad embed``): its loss, its views, that it learns, and the embeddings files it writes."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from lplgrad.cli.main import main
from lplgrad.config import schema as cfg
from lplgrad.config.schema import DataConfig
from lplgrad.data.embeddings import load_embeddings, write_embeddings
from lplgrad.data.loaders import load_dataset
from lplgrad.errors import UserError
from lplgrad.selfsup.simclr import SimCLRConfig, SimCLRModel, embed_images, nt_xent, train_simclr
from lplgrad.selfsup.views import ViewSettings, random_views
from tests.helpers import make_dataset, write_images


def reference_nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. (1) of Chen et al. 2020 written out term by term."""
    z = torch.nn.functional.normalize(torch.cat([first, second]), dim=1)
    n = len(first)
    total = torch.zeros((), dtype=z.dtype)
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total -= torch.log(torch.exp(z[i] @ z[j] / temperature) / denominator)
    return total / (2 * n)


def test_nt_xent_is_equation_1() -> None:
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    for temperature in (0.1, 0.5, 1.0):
        assert torch.allclose(nt_xent(first, second, temperature), reference_nt_xent(first, second, temperature))


def test_nt_xent_is_low_when_the_views_agree_and_the_images_differ() -> None:
    distinct = torch.eye(4, dtype=torch.float64)
    assert nt_xent(distinct, distinct, 0.1) < 0.01
    assert nt_xent(distinct, distinct.roll(1, 0), 0.1) > 5  # every partner is another image


def test_views_without_crop_or_jitter_are_the_image_or_its_mirror() -> None:
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    settings = ViewSettings(min_area=1.0, ratio=(1.0, 1.0), jitter=0.0, gray_probability=0.0)
    views = random_views(images, settings, torch.Generator().manual_seed(0))
    x = images.float() / 255
    same = (views - x).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (views - x.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_views_differ_per_image_and_repeat_with_the_seed() -> None:
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(8, -1, -1, -1)
    views = random_views(images, ViewSettings(), torch.Generator().manual_seed(1))
    assert views.shape == (8, 3, 16, 16) and views.dtype == torch.float32
    assert views.min() >= 0 and views.max() <= 1
    assert len({tuple(v.flatten()[:20].tolist()) for v in views}) == 8  # the same image, eight different views
    assert torch.equal(views, random_views(images, ViewSettings(), torch.Generator().manual_seed(1)))


def test_simclr_features_separate_the_classes_better_than_untrained_ones() -> None:
    # Labels are never shown to SimCLR; a nearest-neighbour classifier on its features scores higher
    # than on the same networks before training. Two seeds, averaged: one 8x8-digits run moves by a
    # few points between CPUs (AVX2 vs AVX-512 rounding), the mean gain stays near 0.09-0.11.
    dataset = load_dataset(DataConfig(name="digits"))
    labels = dataset.train.labels.numpy()

    def knn_accuracy(model: SimCLRModel) -> float:
        features = torch.nn.functional.normalize(embed_images(model, dataset, torch.device("cpu")), dim=1)
        return float(cross_val_score(KNeighborsClassifier(10), features.numpy(), labels, cv=3).mean())

    gains = []
    for seed in (1, 2):
        config = SimCLRConfig(epochs=8, batch_size=128, width=8, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the initialization train_simclr starts from
            untrained = SimCLRModel(1, config.width, config.stem, config.projection_dim)
        views = random_views(dataset.train.images[:128], config.views, torch.Generator().manual_seed(9))
        views_again = random_views(dataset.train.images[:128], config.views, torch.Generator().manual_seed(10))
        before = _view_loss(untrained, dataset, views, views_again, config.temperature)
        trained = train_simclr(dataset, config, torch.device("cpu"))
        assert _view_loss(trained, dataset, views, views_again, config.temperature) < before - 0.3  # NT-Xent fell
        gains.append(knn_accuracy(trained) - knn_accuracy(untrained))
    assert sum(gains) / len(gains) > 0.04


@torch.no_grad()
def _view_loss(model: SimCLRModel, dataset, first: torch.Tensor, second: torch.Tensor, temperature: float) -> float:
    """NT-Xent of two fixed sets of views of the same images (eval mode: no batch statistics)."""
    model.eval()
    return float(nt_xent(model(dataset.standardize(first)), model(dataset.standardize(second)), temperature))


def test_embeddings_file_in_pool_order_or_through_an_index(tmp_path) -> None:
    dataset = make_dataset(num_train=6)
    files = tuple(f"train/c{i % 2}/{i}.png" for i in range(6))
    dataset = replace(dataset, train_files=files)  # as an image folder's dataset
    features = torch.randn(6, 4)
    write_embeddings(tmp_path / "emb.npy", features, files)
    in_order = load_embeddings(str(tmp_path / "emb.npy"), dataset)
    assert torch.allclose(in_order, torch.nn.functional.normalize(features.double(), dim=1))
    index = (tmp_path / "emb.csv").read_text().splitlines()
    assert index[0] == "path,row" and index[1] == "train/c0/0.png,0"

    # The same embeddings shuffled, with two extra rows: the index finds each image's row.
    order = [7, 3, 0, 5, 1, 6, 2, 4]
    shuffled = torch.zeros(8, 4)
    for image, row in enumerate(order[:6]):
        shuffled[row] = features[image]
    np.save(tmp_path / "shuffled.npy", shuffled.numpy())
    rows = "".join(f"{files[image]},{row}\n" for image, row in enumerate(order[:6]))
    (tmp_path / "shuffled.csv").write_text("path,row\n" + rows)
    through_index = load_embeddings(str(tmp_path / "shuffled.npy"), dataset, str(tmp_path / "shuffled.csv"))
    assert torch.equal(through_index, in_order)


@pytest.mark.parametrize(
    ("index_text", "message"),
    [
        ("file,row\n", "must start with the header line"),
        ("path,row\ntrain/c0/0.png,0\n", "no row for 5 training image"),
        ("path,row\n" + "".join(f"train/c{i % 2}/{i}.png,{i + 10}\n" for i in range(6)), "points to row 15"),
        ("path,row\ntrain/c0/0.png,zero\n", "line 2: expected 'path,row'"),
        ("path,row\ntrain/c0/0.png,0\ntrain/c0/0.png,1\n", "listed twice"),
    ],
)
def test_a_bad_index_is_a_one_line_error(tmp_path, index_text: str, message: str) -> None:
    dataset = make_dataset(num_train=6)
    dataset = replace(dataset, train_files=tuple(f"train/c{i % 2}/{i}.png" for i in range(6)))
    np.save(tmp_path / "emb.npy", np.ones((6, 3), dtype=np.float32))
    (tmp_path / "emb.csv").write_text(index_text)
    with pytest.raises(UserError, match=message):
        load_embeddings(str(tmp_path / "emb.npy"), dataset, str(tmp_path / "emb.csv"))


def test_an_index_needs_an_image_folder_and_values_must_be_finite(tmp_path) -> None:
    dataset = make_dataset(num_train=6)
    (tmp_path / "emb.csv").write_text("path,row\n")
    np.save(tmp_path / "emb.npy", np.ones((6, 3)))
    with pytest.raises(UserError, match="this dataset has none"):
        load_embeddings(str(tmp_path / "emb.npy"), dataset, str(tmp_path / "emb.csv"))
    np.save(tmp_path / "nan.npy", np.full((6, 3), np.nan))
    with pytest.raises(UserError, match="NaN"):
        load_embeddings(str(tmp_path / "nan.npy"), dataset)
    with pytest.raises(UserError, match=r"embeddings_index maps rows of active\.embeddings"):
        cfg.resolve({"active.embeddings_index": str(tmp_path / "emb.csv")})


def test_image_folder_training_files_name_their_rows(tmp_path) -> None:
    root = tmp_path / "split"
    write_images(root / "train", {"cat": 3, "dog": 2})
    write_images(root / "test", {"cat": 1, "dog": 1}, seed=1)
    (root / "train" / "cat" / "0a-broken.png").write_bytes(b"not an image")
    flat = tmp_path / "flat"
    write_images(flat, {"cat": 6, "dog": 6}, seed=2)
    (flat / "dog" / "0a-broken.png").write_bytes(b"not an image")
    (tmp_path / "alias").symlink_to(flat)  # the same folder spelled another way hits the same cache
    for folder in (root, flat, tmp_path / "alias"):
        for attempt in range(2):  # decoded (or cached under the other spelling), then from the cache
            dataset = load_dataset(DataConfig(name=f"imagefolder:{folder}", cache_dir=str(tmp_path / "cache")))
            assert len(dataset.train_files) == len(dataset.train), attempt
            for row, file in enumerate(dataset.train_files):
                pixels = np.asarray(Image.open(folder / file))
                assert (dataset.train.images[row].permute(1, 2, 0).numpy() == pixels).all(), file
                assert dataset.classes[int(dataset.train.labels[row])] == Path(file).parent.name


def test_embed_command_then_typiclust_on_an_image_folder(tmp_path, capsys) -> None:
    root = tmp_path / "photos"
    write_images(root / "train", {"cat": 12, "dog": 12})
    write_images(root / "test", {"cat": 4, "dog": 4}, seed=1)
    common = ["--dataset", f"imagefolder:{root}", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--width", "4"]
    out = tmp_path / "features.npy"
    assert main(["embed", *common, "--epochs", "2", "--batch-size", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"embeddings: {out} (24 x 32" in printed
    assert f"active.embeddings_index={tmp_path / 'features.csv'}" in printed
    assert np.load(out).shape == (24, 32)
    run = [
        "run", *common, "--strategy", "typiclust,probcover", "--initial", "4", "--query", "4", "--rounds", "2",
        "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"),
        "--set", f"active.embeddings={out}", "--set", f"active.embeddings_index={tmp_path / 'features.csv'}",
    ]  # fmt: skip
    assert main(run) == 0
    assert main(["embed", *common, "--out", str(tmp_path / "features.txt")]) == 2
    assert "--out must name a .npy file" in capsys.readouterr().err
