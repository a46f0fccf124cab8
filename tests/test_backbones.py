"""Pretrained backbones and the head mode: the real EfficientNet-Lite0 weights, the cached features,
the head's closed-form gradient norm, and bad input."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from lplgrad.cli.main import main
from lplgrad.config.schema import resolve
from lplgrad.errors import UserError
from lplgrad.models.backbones import create_pretrained
from lplgrad.models.head import FeatureHead
from lplgrad.project import db, features, workflow
from lplgrad.project.query import query
from lplgrad.scoring.gradnorm import per_sample_grad_norms
from lplgrad.train.features import pooled_features
from tests.helpers import CLASSES, make_images, shape_images, write_images

HEAD = {"model.backbone": "efficientnet-lite0", "train.finetune": "head", "device": "cpu", "train.min_steps": 50}


def test_the_wheels_imagenet_weights_make_features_far_better_than_random_ones() -> None:
    """A linear probe on 8x8 digits scaled to 96 px (to keep the suite fast; 224 is the default):
    ImageNet features vs the same net untrained (measured: 0.84 vs 0.11 at 224 px)."""
    digits = load_digits()
    images = torch.tensor(digits.images * 255 / 16, dtype=torch.uint8)[:, None].expand(-1, 3, -1, -1)
    pick = torch.arange(0, 400)
    accuracy = {}
    for weights in ("imagenet", "none"):
        torch.manual_seed(0)
        backbone, spec = create_pretrained("efficientnet-lite0", 10, weights)
        x = pooled_features(backbone, dataclasses.replace(spec, image_size=96), images[pick]).float().numpy()
        probe = LogisticRegression(max_iter=2000).fit(x[:200], digits.target[pick][:200])
        accuracy[weights] = probe.score(x[200:], digits.target[pick][200:])
    assert accuracy["imagenet"] > 0.7 and accuracy["imagenet"] > accuracy["none"] + 0.4, accuracy


def test_the_heads_gradient_norm_is_the_closed_form_and_the_engines() -> None:
    """For a linear head the per-sample gradient of the entropy w.r.t. (W, b) is dH/dz [h, 1]^T, so
    its norm is ||dH/dz|| x ||[h, 1]||: the engine's exact score must be that."""
    torch.manual_seed(0)
    head = FeatureHead([3, 4, 5, 6], 5)
    x = torch.randn(7, 18, 1, 1)
    scores = per_sample_grad_norms(head, x, reduction="global", loss="entropy")
    h = x[:, 12:, 0, 0]
    z = head.fc(h).detach().requires_grad_(True)
    p = torch.softmax(z, dim=1)
    entropy = -(p * torch.log_softmax(z, dim=1)).sum()
    (dz,) = torch.autograd.grad(entropy, z)
    closed = dz.norm(dim=1) * torch.sqrt((h * h).sum(dim=1) + 1)
    torch.testing.assert_close(scores, closed, rtol=1e-4, atol=1e-6)


@pytest.fixture
def head_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    truth = make_images(tmp_path / "pool", 24)
    make_images(tmp_path / "test", 6, seed=1, folders=True)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=HEAD)
    first = query(project, "random", k=6)
    rows = list(csv.DictReader((first.folder / "batch.csv").open(newline="")))
    (tmp_path / "a.csv").write_text("id,label\n" + "".join(f"{r['id']},{truth[r['path']]}\n" for r in rows))
    workflow.import_labels(project, [tmp_path / "a.csv"])
    return project, truth


def test_a_head_round_reads_the_cached_features_and_they_equal_features_computed_now(head_project, monkeypatch):
    project, _ = head_project
    calls: list[int] = []
    real = features.pooled_features
    monkeypatch.setattr(features, "pooled_features", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    result = query(project, "entropy", k=4)
    assert result.accuracy is not None and sum(calls) == 24 + 6  # every pool and test image, once
    calls.clear()
    query(project, "margin", k=4)
    assert calls == []  # the second round computes nothing
    conn = db.connect(project, readonly=True)
    rows = db.pool_images(conn)
    cached, spec = features.project_features(conn, rows, resolve({"data.name": "project", **HEAD}))
    conn.close()
    from lplgrad.project.images import decode

    fresh = pooled_features(create_pretrained("efficientnet-lite0", 2, "default")[0], spec, decode(rows, 224))
    assert torch.equal(cached, fresh)


def test_the_feature_cache_resumes_after_a_kill_and_recomputes_a_changed_image(head_project, monkeypatch) -> None:
    project, _ = head_project
    monkeypatch.setattr(features, "CHUNK", 8)
    real = features.pooled_features
    done: list[int] = []

    def killed_after_two_chunks(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "pooled_features", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        query(project, "entropy", k=4)
    monkeypatch.setattr(features, "pooled_features", lambda *a, **k: done.append(len(a[2])) or real(*a, **k))
    query(project, "entropy", k=4)
    assert sum(done) == 24 + 6  # the two finished chunks were kept: 16 + 14, nothing twice
    conn = db.connect(project, readonly=True)
    row = db.pool_images(conn)[0]
    conn.close()
    data = bytearray(row.full_path.read_bytes())
    data[-5] ^= 0xFF
    row.full_path.write_bytes(bytes(data))
    workflow.add(project, Path(row.root), accept_changed=True)
    done.clear()
    query(project, "entropy", k=2)
    assert sum(done) == 1  # the changed image, and only it


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--set", "model.backbone=vgg"], "unknown backbone 'vgg'"),
        (["--set", "train.finetune=head"], "freezes pretrained weights; resnet18 trains from scratch"),
        (["--set", "train.finetune=last"], "freezes pretrained weights; resnet18 trains from scratch"),
        (["--set", "model.backbone=efficientnet-lite0", "--set", "train.finetune=some"], "must be head, last or all"),
        (["--set", "model.backbone=efficientnet-lite0", "--set", "model.input_size=16"], "must be 32 to 1024 px"),
        (["--set", "model.input_size=64"], "resnet18 reads data.image_size"),
        (["--set", "model.weights=imagenet"], "resnet18 trains from scratch"),
    ],
)
def test_bad_backbone_settings_are_one_line_errors(tmp_path, capsys, settings, message) -> None:
    assert main(["-q", "run", "--dataset", "digits", *settings, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "run").exists()


def test_a_weights_file_that_is_missing_or_does_not_fit_is_named(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        create_pretrained("efficientnet-lite0", 3, str(tmp_path / "nope.pt"))
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "small.pt")
    with pytest.raises(UserError, match="do not fit efficientnet-lite0"):
        create_pretrained("efficientnet-lite0", 3, str(tmp_path / "small.pt"))
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(UserError, match="not a readable state dict"):
        create_pretrained("efficientnet-lite0", 3, str(tmp_path / "text.pt"))


@pytest.mark.skipif(os.environ.get("LPLGRAD_OFFLINE_CHECK") is None, reason="set LPLGRAD_OFFLINE_CHECK=1 offline")
def test_a_torchvision_model_offline_names_the_file_to_place() -> None:
    with pytest.raises(UserError, match=r"place .* there by hand"):
        create_pretrained("torchvision:resnet18", 3, "imagenet")


def test_lplgrad_run_in_head_mode_computes_the_features_once(tmp_path, monkeypatch) -> None:
    from lplgrad.train import features as train_features
    from tests.helpers import write_images

    write_images(tmp_path / "folder" / "train", {"a": 15, "b": 15})
    write_images(tmp_path / "folder" / "test", {"a": 5, "b": 5}, seed=1)
    calls: list[int] = []
    real = train_features.pooled_features
    monkeypatch.setattr(train_features, "pooled_features", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    for out in ("first", "second"):
        args = [
            "-q",
            "run",
            "--dataset",
            f"imagefolder:{tmp_path / 'folder'}",
            "--strategy",
            "lplgrad,entropy",
            "--initial",
            "6",
            "--query",
            "4",
            "--rounds",
            "2",
            "--set",
            "model.backbone=efficientnet-lite0",
            "--set",
            "train.finetune=head",
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--set",
            "train.min_steps=0",
            "--out",
            str(tmp_path / out),
        ]
        assert main(args) == 0
    assert calls == [30, 10]  # train and test features, computed by the first run only
    rows = [line for line in (tmp_path / "second" / "results.jsonl").read_text().splitlines() if line]
    assert len(rows) == 4 and rows[0].startswith('{"strategy":"lplgrad"')


@pytest.mark.pretrained_default
def test_a_new_project_defaults_to_the_pretrained_head_and_badge_and_says_so(tmp_path, capsys) -> None:
    truth = shape_images(tmp_path / "pool", 24, seed=0)  # different pictures: no batch loses a near copy
    project = tmp_path / "project"
    assert main(["init", str(project), "--images", str(tmp_path / "pool"), "--classes", "red,green,blue"]) == 0
    assert "model: efficientnet-lite0 (ImageNet weights) frozen, a linear head" in capsys.readouterr().out
    text = (project / "config.toml").read_text()
    assert 'backbone = "efficientnet-lite0"' in text and 'finetune = "head"' in text and '"badge"' in text
    first = query(project, k=9)
    rows = list(csv.DictReader((first.folder / "batch.csv").open(newline="")))
    (tmp_path / "a.csv").write_text("id,label\n" + "".join(f"{r['id']},{truth[r['path']]}\n" for r in rows))
    workflow.import_labels(project, [tmp_path / "a.csv"])
    second = query(project, k=5)
    assert second.queried == 5 and workflow.status(project)["rounds"][-1]["strategy"] == "badge"


def test_a_project_made_before_backbones_keeps_training_from_scratch(tmp_path) -> None:
    from lplgrad.project.settings import read_settings

    make_images(tmp_path / "pool", 6)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES)
    lines = (project / "config.toml").read_text().splitlines()
    (project / "config.toml").write_text("\n".join(k for k in lines if not k.startswith(("backbone", "finetune"))))
    config = read_settings(project)
    assert (config.model.backbone, config.train.finetune) == ("resnet18", "all")


def test_embed_writes_the_backbones_features_of_a_folder_and_of_a_project(tmp_path, capsys) -> None:
    """``lplgrad embed --backbone``: the pretrained pooled features, no SimCLR; a project's come from
    (and go to) its feature cache, so a later head round computes none."""
    root = tmp_path / "photos"
    write_images(root / "train", {"cat": 5, "dog": 5})
    write_images(root / "test", {"cat": 2, "dog": 2}, seed=1)
    out = tmp_path / "folder.npy"
    common = ["--dataset", f"imagefolder:{root}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["embed", *common, "--backbone", "efficientnet-lite0", "--out", str(out)]) == 0
    assert np.load(out).shape == (10, 1456) and f"embeddings: {out} (10 x 1456" in capsys.readouterr().out
    project = tmp_path / "project"
    shape_images(tmp_path / "pool", 6, seed=0)
    workflow.init(project, tmp_path / "pool", ["a", "b", "c"], settings={"device": "cpu"})
    features = tmp_path / "project.npy"
    assert main(["embed", "--project", str(project), "--backbone", "efficientnet-lite0", "--out", str(features)]) == 0
    assert np.load(features).shape == (6, 1456)
    assert len((tmp_path / "project.csv").read_text().splitlines()) == 7  # header + one row per image
    conn = db.connect(project, readonly=True)
    assert conn.execute("SELECT COUNT(*) FROM features").fetchone()[0] == 6  # cached for the head's rounds
    conn.close()
    assert main(["embed", "--project", str(project), "--backbone", "nope", "--out", str(features)]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
