"""What the project's newest round says about any of its images, for ``lplgrad serve`` and ``push``:
which images its batch holds (by rank), and the newest model's class probabilities.

The model is the newest round's ``models/round-N.pt``, loaded once per file. A head over a frozen
backbone (``train.finetune = head``) reads the backbone's features from the project's cache
(``features.project_features``: computed and stored once per image, as a round does); a network
from scratch reads the decoded images, normalised as it was trained. Either way the files are
checked against their registered bytes first, and the work goes a chunk at a time.
"""

from __future__ import annotations

import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lplgrad.errors import UserError
from lplgrad.models.model_file import Architecture, load_models
from lplgrad.models.output import split_output
from lplgrad.project import db
from lplgrad.project.features import project_features
from lplgrad.project.images import decode
from lplgrad.project.settings import read_settings

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


class Model:
    """The newest model of a project, loaded once per model file (requests share it)."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self._loaded: tuple[str, nn.Module, Architecture] | None = None
        self._lock = threading.Lock()

    def _get(self, model_file: str) -> tuple[nn.Module, Architecture]:
        with self._lock:
            if self._loaded is None or self._loaded[0] != model_file:
                model, _, architecture = load_models(self.project / model_file)
                self._loaded = (model_file, model, architecture)
            return self._loaded[1], self._loaded[2]

    @torch.no_grad()
    def probabilities(self, model_file: str, rows: list[db.ImageRow]) -> torch.Tensor:
        """float [len(rows), classes] softmax of the model in ``model_file`` on these images."""
        model, architecture = self._get(model_file)
        parts = [torch.zeros(0, len(architecture.classes))]
        for start in range(0, len(rows), CHUNK):
            x = self._inputs(architecture, rows[start : start + CHUNK])
            parts.append(torch.softmax(split_output(model(x))[0].float(), dim=1))
        return torch.cat(parts)

    def _inputs(self, architecture: Architecture, rows: list[db.ImageRow]) -> torch.Tensor:
        if not architecture.feature_channels:  # a network from scratch: the images, as it was trained
            mean = torch.tensor(architecture.mean).view(1, -1, 1, 1)
            std = torch.tensor(architecture.std).view(1, -1, 1, 1)
            return (decode(rows, architecture.image_size).float() / 255.0 - mean) / std
        config = read_settings(self.project)
        if config.model.backbone != architecture.backbone:
            raise UserError(
                f"the newest model is a head over {architecture.backbone}, the settings now name "
                f"{config.model.backbone}; train a round first (lplgrad query)"
            )
        with closing(db.connect(self.project)) as conn:  # writable: features computed now are stored
            features, _ = project_features(conn, rows, config, progress=False)
        return features.float()[:, :, None, None]
