"""What the project's newest round says about any of its images, for ``lplgrad serve`` and ``push``:
which images its batch holds (by rank), and the newest model's class probabilities.

The model is the newest round's ``models/round-N.pt``, loaded once per file, and everything about
it comes from that file's architecture: its classes, and for a head over a frozen backbone
(``train.finetune = head``) the backbone's name and weights. Such a head reads the backbone's
features from the project's cache (keyed as ``features.backbone_key``); the backbone itself is
built, once per model file, only when some image's features are missing, and those it computes are
stored in the cache (compared for near duplicates by the next round). A network from scratch reads
the decoded images, normalised as it was trained (``predict.model_inputs``). Either way the files
are checked against their registered bytes first, the work goes a chunk at a time, and an image that
cannot be read is left out (``Probabilities.unreadable``), never failing the others.
"""

from __future__ import annotations

import threading
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lplgrad.errors import UserError
from lplgrad.experiment.runner import resolve_device
from lplgrad.models.backbones import BackboneSpec, backbone_spec
from lplgrad.models.model_file import Architecture, load_models
from lplgrad.models.output import split_output
from lplgrad.project import db
from lplgrad.project.features import backbone_key
from lplgrad.project.images import decode
from lplgrad.project.predict import frozen_backbone, head_inputs, model_inputs
from lplgrad.project.settings import read_settings
from lplgrad.quality.calibration import calibrated
from lplgrad.train.features import pooled_features

CHUNK = 256  # images through the model at once


@dataclass(frozen=True)
class Snapshot:
    """The newest round as predictions see it."""

    round: int | None  # None: no round yet
    model_file: str | None  # of the newest round that trained one, relative to the project
    batch: dict[int, int]  # image id -> rank in the newest round's batch
    classes: list[str]

    @property
    def version(self) -> str:
        """The model version Label Studio files predictions under: one per round."""
        return "lplgrad-untrained" if self.round is None else f"lplgrad-round-{self.round}"


def snapshot(project: Path) -> Snapshot:
    with closing(db.connect(project, readonly=True)) as conn, db.snapshot(conn):
        rounds = db.rounds(conn)
        newest = int(rounds[-1]["round"]) if rounds else None
        files = [str(r["model_file"]) for r in rounds if r["model_file"]]
        batch = {q.image.id: q.rank for q in db.queried_images(conn) if q.round == newest}
        return Snapshot(newest, files[-1] if files else None, batch, db.classes(conn))


def unlabeled_pool(project: Path) -> list[db.ImageRow]:
    """Every unlabeled pool image, by id (what ``push --all`` sends)."""
    with closing(db.connect(project, readonly=True)) as conn:
        return [row for row in db.pool_images(conn) if row.label is None]


def unlabeled_count(project: Path) -> int:
    """Pool images without a label, counted by SQLite."""
    with closing(db.connect(project, readonly=True)) as conn:
        counts = db.counts(conn)
    return counts["images"] - counts["labeled"]


def images_by_id(project: Path, ids: list[int]) -> list[db.ImageRow]:
    """These images' rows, in the order given (ids not in the project are left out)."""
    with closing(db.connect(project, readonly=True)) as conn:
        rows = {row.id: row for row in db.images(conn)}
    return [rows[i] for i in ids if i in rows]


@dataclass(frozen=True)
class Probabilities:
    """A model's class probabilities for the images it could read."""

    classes: list[str]  # the model file's, in its output order
    by_image: dict[int, list[float]]  # image id -> softmax
    unreadable: dict[int, str]  # image id -> why it was left out (missing, changed, undecodable)


@dataclass
class _Loaded:
    """One model file, and for a head what its backbone needs, each made once."""

    file: str
    model: nn.Module
    architecture: Architecture
    spec: BackboneSpec | None = None  # a head's backbone's input size and feature levels
    key: str | None = None  # its features' key in the cache
    backbone: tuple[nn.Module, BackboneSpec] | None = None  # with its weights: built when features are missing
    temperature: float = 1.0  # fitted in the round that wrote the file: its confidences are calibrated


class Model:
    """The newest model of a project, loaded once per model file (requests share it)."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def _get(self, model_file: str) -> _Loaded:
        with self._lock:
            if self._loaded is None or self._loaded.file != model_file:
                model, _, architecture = load_models(self.project / model_file)
                loaded = _Loaded(model_file, model, architecture)
                with closing(db.connect(self.project, readonly=True)) as conn:
                    loaded.temperature = db.temperature_of(conn, model_file)
                if architecture.feature_channels:  # the spec only: no weights are read for it
                    loaded.spec = backbone_spec(architecture.backbone, architecture.input_size)
                    config = read_settings(self.project)
                    named = replace(config.model, backbone=architecture.backbone, weights=architecture.weights)
                    loaded.key = backbone_key(replace(config, model=named), loaded.spec.image_size)
                self._loaded = loaded
            return self._loaded

    def _backbone(self, loaded: _Loaded) -> tuple[nn.Module, BackboneSpec]:
        with self._lock:
            if loaded.backbone is None:
                built = frozen_backbone(loaded.architecture)
                assert built is not None  # a head: feature_channels
                built[0].to(resolve_device(read_settings(self.project).device))
                loaded.backbone = built
            return loaded.backbone

    @torch.no_grad()
    def probabilities(self, model_file: str, rows: list[db.ImageRow]) -> Probabilities:
        """The temperature-scaled softmax of the model in ``model_file`` on each of these images it can read."""
        loaded = self._get(model_file)
        found: dict[int, list[float]] = {}
        unreadable: dict[int, str] = {}
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            if loaded.architecture.feature_channels:
                readable, x = self._features(loaded, chunk, unreadable)
            else:
                readable, images = _decode_readable(chunk, loaded.architecture.image_size, unreadable)
                x = model_inputs(loaded.architecture, images, None)
            if readable:
                p = calibrated(split_output(loaded.model(x))[0], loaded.temperature)  # temperature-scaled
                found.update(zip([row.id for row in readable], p.tolist(), strict=True))
        return Probabilities(list(loaded.architecture.classes), found, unreadable)

    def _features(
        self, loaded: _Loaded, rows: list[db.ImageRow], unreadable: dict[int, str]
    ) -> tuple[list[db.ImageRow], torch.Tensor]:
        """The head's inputs for the rows whose features are cached or can be computed now."""
        assert loaded.spec is not None and loaded.key is not None
        with closing(db.connect(self.project)) as conn:  # writable: features computed now are stored
            stored = db.cached_features(conn, loaded.key, [row.sha256 for row in rows])
            missing = list({row.sha256: row for row in rows if row.sha256 not in stored}.values())
            if missing:
                backbone = self._backbone(loaded)
                computed, images = _decode_readable(missing, loaded.spec.image_size, unreadable)
                vectors = pooled_features(backbone[0], backbone[1], images).numpy()
                items = [(row.sha256, vector.tobytes()) for row, vector in zip(computed, vectors, strict=True)]
                if items:
                    with db.transaction(conn):
                        db.add_features(conn, loaded.key, items)
                    stored.update(items)
        readable = [row for row in rows if row.sha256 in stored]
        for row in rows:  # a copy of an unreadable image (the same bytes) is left out with it
            if row.sha256 not in stored and row.id not in unreadable:
                unreadable[row.id] = next(unreadable[r.id] for r in missing if r.sha256 == row.sha256)
        dims = sum(loaded.spec.feature_channels)
        cached = [np.frombuffer(stored[row.sha256], dtype=np.float16, count=dims) for row in readable]
        matrix = np.stack(cached) if cached else np.zeros((0, dims), dtype=np.float16)
        return readable, head_inputs(torch.from_numpy(matrix.copy()))


def _decode_readable(
    rows: list[db.ImageRow], size: int, unreadable: dict[int, str]
) -> tuple[list[db.ImageRow], torch.Tensor]:
    """The rows that can be read now and their uint8 [N, 3, size, size] images; why each other one
    cannot goes to ``unreadable`` (a missing, changed or undecodable file fails only itself)."""
    try:
        return rows, decode(rows, size)
    except UserError:  # one of them at least: which, one at a time
        pass
    readable, images = [], []
    for row in rows:
        try:
            images.append(decode([row], size))
            readable.append(row)
        except UserError as error:
            unreadable[row.id] = str(error)
    return readable, torch.cat(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
