"""``lplgrad predict``: the project's latest model on any images, streamed in chunks."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from lplgrad.data.imagefolder import IMAGE_EXTENSIONS, decode_image
from lplgrad.errors import UserError
from lplgrad.models.backbones import create_pretrained
from lplgrad.models.model_file import Architecture, load_models
from lplgrad.models.output import split_output
from lplgrad.project import db
from lplgrad.project.exchange import csv_writer, spreadsheet_text
from lplgrad.project.images import WORKERS
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.train.features import pooled_features

CHUNK = 256


def latest_model(project: Path) -> tuple[torch.nn.Module, Architecture]:
    """w_main of the newest round that trained one, with its architecture (``models.model_file``)."""
    with closing(db.connect(project, readonly=True)) as conn:
        files = [r["model_file"] for r in db.rounds(conn) if r["model_file"]]
    if not files:
        raise UserError(f"{project} has no trained model yet; run lplgrad query after importing some labels")
    model, _, architecture = load_models(project / str(files[-1]))
    return model, architecture


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
    model, architecture = latest_model(project)
    files = expand(paths)
    classes, size = architecture.classes, architecture.image_size
    mean = torch.tensor(architecture.mean).view(1, -1, 1, 1)
    std = torch.tensor(architecture.std).view(1, -1, 1, 1)
    backbone = None
    if architecture.feature_channels:  # a head on a frozen backbone: images -> the backbone's features first
        backbone, spec = create_pretrained(architecture.backbone, 2, architecture.weights)
        size = spec.image_size
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
        if backbone is not None:
            x = pooled_features(backbone, spec, images).float()[:, :, None, None]
        else:
            x = (images.to(torch.float32, memory_format=torch.contiguous_format) / 255.0 - mean) / std
        probabilities = torch.softmax(split_output(model(x))[0], dim=1)
        confidence, predicted = probabilities.max(dim=1)
        for path, p, c, row in zip(chunk, predicted.tolist(), confidence.tolist(), probabilities.tolist(), strict=True):
            writer.writerow(
                [spreadsheet_text(str(path)), spreadsheet_text(classes[p]), f"{c:.4f}", *(f"{v:.4f}" for v in row)]
            )
    write_atomic(out, text.getvalue())
    return len(files)
