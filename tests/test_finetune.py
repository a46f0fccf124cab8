"""``train.finetune = last | all`` with a pretrained backbone: the last stage trained on the trunk's
cached output is the whole backbone with its trunk frozen, its gradient norms are over the trainable
weights only, ``all`` trains every weight on resized images, and both rebuild from a model file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lplgrad.cli.main import main
from lplgrad.config.schema import resolve
from lplgrad.errors import UserError
from lplgrad.models.backbones import BackboneSpec, create_pretrained
from lplgrad.models.build import architecture, build_models
from lplgrad.models.last_stage import LastStageHead
from lplgrad.models.model_file import model_state, models_from_state
from lplgrad.models.pretrained_input import PretrainedInput
from lplgrad.project.settings import resolve_settings
from lplgrad.scoring.gradnorm import per_sample_grad_norms, per_sample_grad_norms_loop
from lplgrad.train.features import cached_features_dataset, pooled_features, trunk_map_shape
from tests.helpers import make_dataset, write_images

SIZE = 64  # the backbone's input size in these tests (224 by default), to keep them fast


def _lite0(weights: str = "imagenet", classes: int = 4) -> tuple[torch.nn.Module, BackboneSpec]:
    torch.manual_seed(0)
    net, spec = create_pretrained("efficientnet-lite0", classes, weights)
    return net.eval(), dataclasses.replace(spec, image_size=SIZE)


def _backbone_input(images: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """What the cached modes feed the backbone: [0, 1], resized (antialiased), normalised."""
    x = F.interpolate(images.double() / 255, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    return (x - mean) / std


def _last_stage_head(net: torch.nn.Module, spec: BackboneSpec) -> LastStageHead:
    trunk_map = trunk_map_shape(net, spec)
    return LastStageHead(net.last_stage(), net.fc, net._dropout, list(spec.feature_channels), trunk_map)  # type: ignore[operator, arg-type]


def test_the_last_stage_on_the_cached_trunk_output_is_the_whole_backbone() -> None:
    """Logits and all four feature levels of the cached path equal the full forward pass (float16 cache)."""
    net, spec = _lite0()
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    rows = pooled_features(net, spec, images, cut="last")
    c, h, w = trunk_map_shape(net, spec)
    assert rows.dtype == torch.float16 and rows.shape == (5, 24 + 40 + 112 + c * h * w)
    head = _last_stage_head(net, spec).eval()
    cached = head(rows.float()[:, :, None, None])
    with torch.no_grad():
        full = net(_backbone_input(images, spec).float())
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=2e-3)
    for level, (got, want) in enumerate(zip(cached.features, full.features, strict=True)):
        pooled = got.mean(dim=(2, 3))
        torch.testing.assert_close(pooled, want.mean(dim=(2, 3)), rtol=0, atol=5e-3, msg=f"level {level}")


def test_last_mode_gradient_norms_are_the_backbones_with_its_trunk_frozen() -> None:
    """The engine's exact per-sample entropy-gradient norms of the cached last stage equal the
    one-image-at-a-time norms of the whole backbone on images with every trunk weight frozen
    (float64, so the comparison is exact up to rounding); the trunk's weights add nothing."""
    net, spec = _lite0()
    net = net.double()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    x = _backbone_input(images, spec)
    with torch.no_grad():
        taps, trunk_map = net.trunk(x)  # type: ignore[operator]
    rows = torch.cat([*(t.mean(dim=(2, 3)) for t in taps), trunk_map.flatten(1)], dim=1)[:, :, None, None]
    head = _last_stage_head(net, spec)
    scores = per_sample_grad_norms(head, rows, reduction="global")
    trained = {id(p) for p in head.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in trained)
    reference = per_sample_grad_norms_loop(net, x, reduction="global")
    torch.testing.assert_close(scores.double(), reference.double(), rtol=1e-5, atol=0)
    assert sum(p.numel() for p in head.parameters()) < sum(p.numel() for p in net.parameters())


def test_all_mode_feeds_the_backbone_resized_images_and_trains_every_weight() -> None:
    dataset = make_dataset(num_train=8, num_test=4, classes=4, size=12)
    config = resolve({"model.backbone": "efficientnet-lite0", "train.finetune": "all", "device": "cpu"})
    model, aux = build_models(config, dataset, seed=0, device=torch.device("cpu"))
    assert isinstance(model, PretrainedInput) and all(p.requires_grad for p in model.parameters())
    assert aux.branches[-1].in_features == 1280  # w_aux reads the backbone's own four levels
    net, spec = create_pretrained("efficientnet-lite0", 4, "imagenet")
    net.load_state_dict(model.backbone.state_dict())
    images = dataset.train.images[:3]
    model.eval(), net.eval()
    with torch.no_grad():
        got = model(dataset.normalize(images)).logits
        pixels = F.interpolate(images.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        want = net((pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    rebuilt, _, _ = models_from_state(model_state(model, aux, architecture(config, dataset)))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(dataset.normalize(images)).logits, got)


def test_a_last_mode_model_file_rebuilds_the_same_model() -> None:
    net, spec = _lite0(classes=3)
    head = _last_stage_head(net, spec).eval()
    config = resolve({"model.backbone": "efficientnet-lite0", "train.finetune": "last", "device": "cpu"})
    dataset = dataclasses.replace(
        make_dataset(num_train=4, num_test=2, classes=3),
        feature_channels=spec.feature_channels,
        trunk_map=trunk_map_shape(net, spec),
    )
    aux = build_models(config, dataset, 0, torch.device("cpu"))[1]
    rebuilt, _, arch = models_from_state(model_state(head, aux, architecture(config, dataset)))
    rows = torch.randn(2, 176 + 192 * 2 * 2, 1, 1)
    assert isinstance(rebuilt, LastStageHead) and arch.trunk_map == [192, 2, 2]
    torch.testing.assert_close(rebuilt(rows).logits, head(rows).logits)


def _last_mode_run(tmp_path: Path, rounds: int = 2) -> list[str]:
    write_images(tmp_path / "folder" / "train", {"a": 12, "b": 12})
    write_images(tmp_path / "folder" / "test", {"a": 4, "b": 4}, seed=1)
    base = ["-q", "run", "--dataset", f"imagefolder:{tmp_path / 'folder'}", "--initial", "6", "--query", "4"]
    base += ["--rounds", str(rounds), "--device", "cpu", "--epochs", "1", "--set", "train.min_steps=0"]
    base += ["--set", "model.backbone=efficientnet-lite0", "--set", "train.finetune=last"]
    return [*base, "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.batch_size=8"]


def test_lplgrad_run_in_last_mode_caches_the_trunk_once_and_trains_the_last_stage(tmp_path) -> None:
    base = _last_mode_run(tmp_path)
    assert main([*base, "--strategy", "lplgrad,ent-gradnorm", "--out", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["labeled"]) for r in rows] == [
        ("lplgrad", 6),
        ("lplgrad", 10),
        ("ent-gradnorm", 6),
        ("ent-gradnorm", 10),
    ]
    assert all(0 <= r["test_accuracy"] <= 1 and r["steps"] > 0 for r in rows)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(("trunk", "features")))
    assert len(cached) == 1 and cached[0].startswith("trunk-last-efficientnet-lite0-")


def test_the_modes_that_need_a_pretrained_backbone_or_run_only_in_experiments_say_so() -> None:
    for finetune in ("last", "all"):
        with pytest.raises(UserError, match=r"runs in `lplgrad run`; a labeling project uses train\.finetune = head"):
            resolve_settings({"train.finetune": finetune, "model.backbone": "efficientnet-lite0"})
    resolve_settings({"train.finetune": "all", "model.backbone": "resnet18"})  # from scratch: fine


def test_model_input_size_resizes_to_it_and_keys_the_cache_by_it(tmp_path) -> None:
    dataset = make_dataset(num_train=3, num_test=2, size=12)
    at_64 = cached_features_dataset(dataset, "efficientnet-lite0", "default", tmp_path, input_size=64)
    net, spec = _lite0()  # image_size 64, the same ImageNet weights
    torch.testing.assert_close(at_64.train.images[:, :, 0, 0], pooled_features(net, spec, dataset.train.images))
    cached_features_dataset(dataset, "efficientnet-lite0", "default", tmp_path, input_size=96)
    assert len(list(tmp_path.iterdir())) == 2  # one file per input size, never mixed


def test_a_torchvision_resnets_last_stage_is_layer4_on_the_cached_layer3_output() -> None:
    torch.manual_seed(0)
    net, spec = create_pretrained("torchvision:resnet18", 3, "none")
    net, spec = net.eval(), dataclasses.replace(spec, image_size=SIZE)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    rows = pooled_features(net, spec, images, cut="last")
    assert trunk_map_shape(net, spec) == (256, 4, 4) and rows.shape == (3, 64 + 128 + 256 + 256 * 16)
    head = LastStageHead(net.last_stage(), net.fc, torch.nn.Identity(), list(spec.feature_channels), (256, 4, 4))
    with torch.no_grad():
        full = net(_backbone_input(images, spec).float())
        cached = head.eval()(rows.float()[:, :, None, None])
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=5e-3)
    trained = {id(p) for p in head.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in trained)
    x = _backbone_input(images, spec).double()
    with torch.no_grad():
        taps, trunk_map = net.double().trunk(x)  # type: ignore[operator]
    exact = torch.cat([*(t.mean(dim=(2, 3)) for t in taps), trunk_map.flatten(1)], dim=1)[:, :, None, None]
    scores = per_sample_grad_norms(head, exact)  # in-place ReLUs: the torch.func path, exact too
    torch.testing.assert_close(scores.double(), per_sample_grad_norms_loop(net, x).double(), rtol=1e-5, atol=0)


def test_all_mode_reads_grey_images_as_three_channels_and_fine_tuned_batchnorm_keeps_up() -> None:
    grey = make_dataset(num_train=6, num_test=2, classes=3, size=12)
    grey = dataclasses.replace(
        grey,
        train=dataclasses.replace(grey.train, images=grey.train.images[:, :1].contiguous()),
        test=dataclasses.replace(grey.test, images=grey.test.images[:, :1].contiguous()),
        mean=(0.5,),
        std=(0.25,),
    )
    config = resolve({"model.backbone": "efficientnet-lite0", "train.finetune": "all", "device": "cpu"})
    model = build_models(config, grey, seed=0, device=torch.device("cpu"))[0].eval()
    images = grey.train.images[:2]
    with torch.no_grad():
        got = model(grey.normalize(images)).logits
        pixels = F.interpolate(images.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
        spec = create_pretrained("efficientnet-lite0", 3, "none")[1]
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
        want = model.backbone((pixels.expand(-1, 3, -1, -1) - mean) / std).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The Lite weights' TensorFlow momentum (0.01) would leave the running statistics ImageNet's.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    net, _ = create_pretrained("efficientnet-lite0", 3, "none")
    assert all(m.momentum == 0.01 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_a_pretrained_backbone_is_frozen_unless_told_otherwise() -> None:
    assert resolve({"model.backbone": "efficientnet-lite0"}).train.finetune == "head"
    assert resolve({"model.backbone": "efficientnet-lite0", "train.finetune": "all"}).train.finetune == "all"
    assert resolve({}).train.finetune == "all"  # resnet18 from scratch


def test_embed_sizes_a_pretrained_backbones_input_with_model_input_size(tmp_path, capsys) -> None:
    args = ["-q", "embed", "--dataset", "digits", "--backbone", "efficientnet-lite0", "--device", "cpu"]
    args += ["--set", "model.input_size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*args, "--out", str(tmp_path / "digits.npy")]) == 0
    assert np.load(tmp_path / "digits.npy").shape[1] == 1456
    assert len(list((tmp_path / "cache").glob("features-*"))) == 1


def test_a_last_mode_run_interrupted_in_a_round_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch) -> None:
    """The warm-started last stage (and its BatchNorm statistics) goes through the checkpoint."""
    from lplgrad.experiment.results import read_rows
    from lplgrad.train import fit as train

    args = [*_last_mode_run(tmp_path, rounds=3), "--strategy", "lplgrad", "--set", "deterministic=true"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    calls, original = [], train.fit

    def interrupted_fit(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr("lplgrad.core.round.fit", interrupted_fit)
    assert main([*args, "--out", str(tmp_path / "run")]) == 130
    monkeypatch.setattr("lplgrad.core.round.fit", original)
    assert (
        main(
            ["-q", "run", "--config", str(tmp_path / "run" / "config.toml"), "--out", str(tmp_path / "run"), "--resume"]
        )
        == 0
    )

    def rows(folder: str) -> list[dict]:
        found = read_rows(tmp_path / folder / "results.jsonl")
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in found]

    assert len(rows("run")) == 3 and rows("run") == rows("reference")
