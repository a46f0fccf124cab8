"""``lplgrad predict``: the project's latest model on any images, streamed in chunks; and what any
prediction of a model file needs (``frozen_backbone``, ``model_inputs``), shared with
``project.suggest`` (``lplgrad serve``)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lplgrad.data.imagefolder import IMAGE_EXTENSIONS, decode_image
from lplgrad.errors import UserError
from lplgrad.models.backbones import BackboneSpec, create_pretrained
from lplgrad.models.model_file import Architecture, load_models
from lplgrad.models.output import split_output
from lplgrad.project import db
from lplgrad.project.exchange import csv_writer, spreadsheet_text
from lplgrad.project.images import WORKERS
from lplgrad.quality.calibration import calibrated
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.train.features import pooled_features

CHUNK = 256


def latest_model(project: Path) -> tuple[torch.nn.Module, Architecture, float]:
    """w_main of the newest round that trained one, with its architecture (``models.model_file``)
    and the temperature that calibrates its confidences (``quality.calibration``)."""
    with closing(db.connect(project, readonly=True)) as conn:
        files = [r["model_file"] for r in db.rounds(conn) if r["model_file"]]
        temperature = db.temperature_of(conn, str(files[-1])) if files else 1.0
    if not files:
        raise UserError(f"{project} has no trained model yet; run lplgrad query after importing some labels")
    model, _, architecture = load_models(project / str(files[-1]))
    return model, architecture, temperature


def frozen_backbone(architecture: Architecture) -> tuple[nn.Module, BackboneSpec] | None:
    """The pretrained backbone a head model reads the features of, built with the name and weights
    its model file records (not today's settings); None for a network trained from scratch."""
    if architecture.trunk_map:  # a project never trains one (settings refuse last mode); a run's checkpoint
        raise UserError("this model file fine-tunes a backbone's last stage (a run's); predict reads a head's")
    if not architecture.feature_channels:
        return None
    return create_pretrained(architecture.backbone, 2, architecture.weights, architecture.input_size)


def model_inputs(architecture: Architecture, images: Tensor, backbone: tuple[nn.Module, BackboneSpec] | None) -> Tensor:
    """What w_main reads of uint8 ``images`` [N, C, H, W]: for a head, the backbone's pooled features
    (``head_inputs``); else the images scaled to [0, 1] and normalised as the model was trained."""
    if backbone is not None:
        return head_inputs(pooled_features(backbone[0], backbone[1], images))
    mean = torch.tensor(architecture.mean).view(1, -1, 1, 1)
    std = torch.tensor(architecture.std).view(1, -1, 1, 1)
    return (images.to(torch.float32, memory_format=torch.contiguous_format) / 255.0 - mean) / std


def head_inputs(features: Tensor) -> Tensor:
    """A head's input of pooled features [N, D] (float16 as cached): float [N, D, 1, 1]."""
    return features.float()[:, :, None, None]


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist")
    return found


@torch.no_grad()
def predict_files(project: Path, paths: list[Path], out: Path) -> int:
    """predictions.csv: path, predicted class, its probability, then one probability column per class."""
    model, architecture, temperature = latest_model(project)
    files = expand(paths)
    classes = architecture.classes
    backbone = frozen_backbone(architecture)  # a head on a frozen backbone: images -> its features first
    size = architecture.image_size if backbone is None else backbone[1].image_size
    text = io.StringIO()
    writer = csv_writer(text)
    writer.writerow(["path", "predicted", "confidence", *map(spreadsheet_text, classes)])
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        with ThreadPoolExecutor(WORKERS) as pool:
            arrays = list(pool.map(lambda path: decode_image(path, size), chunk))
        decoded = [a for a in arrays if a is not None]
        if len(decoded) != len(arrays):
            bad = [str(p) for p, a in zip(chunk, arrays, strict=True) if a is None]
            raise UserError(f"cannot decode {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
        images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        logits = split_output(model(model_inputs(architecture, images, backbone)))[0]
        probabilities = calibrated(logits, temperature)
        confidence, predicted = probabilities.max(dim=1)
        for path, p, c, row in zip(chunk, predicted.tolist(), confidence.tolist(), probabilities.tolist(), strict=True):
            writer.writerow(
                [spreadsheet_text(str(path)), spreadsheet_text(classes[p]), f"{c:.4f}", *(f"{v:.4f}" for v in row)]
            )
    write_atomic(out, text.getvalue())
    return len(files)
