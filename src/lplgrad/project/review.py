"""``lplgrad review DIR``: which answers to doubt, and which images are copies of each other.

Every labeled pool image gets out-of-sample probabilities (``train.out_of_fold``: k-fold training
of the project's model, seconds with a head on cached features); confident learning
(``quality.label_errors``) flags the answers the model confidently contradicts, most doubtful
first. The first K are written as DIR/batches/review-N/ (the files of a query batch: batch.csv with
the current label in its label column and the model's suggestion beside it, label-studio.json and
its config) and recorded, so the page can show them; the person corrects the wrong ones and
imports the file with ``lplgrad import DIR FILE --relabel`` (the old labels are kept in the
database). Exact and near duplicates are listed beside it (DIR/batches/review-N/duplicates.csv).
"""

from __future__ import annotations

import io
import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from lplgrad.data import Split
from lplgrad.data.dataset import dataset_of
from lplgrad.errors import UserError
from lplgrad.experiment.runner import resolve_device
from lplgrad.project import db
from lplgrad.project.duplicates import Duplicates, find_duplicates
from lplgrad.project.exchange import (
    LOCAL_FILES_PREFIX,
    BatchItem,
    batch_csv,
    csv_writer,
    label_studio_config,
    label_studio_tasks,
    spreadsheet_text,
)
from lplgrad.project.features import backbone_key, project_features
from lplgrad.project.images import check_unchanged, decode
from lplgrad.project.settings import read_settings
from lplgrad.quality.label_errors import find_label_issues
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.runtime.folder_lock import folder_lock
from lplgrad.train.out_of_fold import out_of_fold_probabilities

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class ReviewResult:
    batch: int
    folder: Path
    reviewed: int  # labeled pool images given out-of-sample probabilities
    flagged: int  # answers the model confidently contradicts
    agreement: float  # fraction of answers the out-of-sample prediction's top class agrees with
    listed: int  # of them, in the batch (the K most doubtful)
    duplicates: Duplicates
    pool_images: int


def review_folder(project: Path, batch: int) -> Path:
    return project / "batches" / f"review-{batch}"


def review(
    project: Path, k: int = 20, folds: int = DEFAULT_FOLDS, url_prefix: str = LOCAL_FILES_PREFIX
) -> ReviewResult:
    """Flag doubtful answers and list duplicates (module docstring); writes the batch folder, then
    records it in one transaction."""
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    if folds < 2:
        raise UserError(f"--folds must be >= 2, got {folds}")
    db.require_project(project)
    with folder_lock(project, "project"), closing(db.connect(project)) as conn:
        config = read_settings(project)
        labeled = check_unchanged([row for row in db.pool_images(conn) if row.label is not None])
        if len(labeled) < 2 * folds:
            raise UserError(
                f"review needs at least {2 * folds} labeled images ({folds} folds), there are {len(labeled)}"
            )
        classes = db.classes(conn)
        backbone = None
        if config.train.finetune == "head":  # every image's features, so near duplicates are found too
            everything = check_unchanged(db.images(conn))
            features, spec = project_features(conn, everything, config)
            backbone = backbone_key(config, spec.image_size)
            position = {row.id: i for i, row in enumerate(everything)}
            images = features[[position[row.id] for row in labeled], :, None, None]
            channels = spec.feature_channels
        else:
            images, channels = decode(labeled, int(db.setting(conn, "image_size") or 64)), ()
        index = {name: i for i, name in enumerate(classes)}
        given = torch.tensor([index[str(row.label)] for row in labeled], dtype=torch.long)
        dataset = dataset_of(
            "project", Split(images, given), Split(images[:1], given[:1]), classes, feature_channels=channels
        )
        log.info("review: %d-fold out-of-sample predictions of %d labeled images", folds, len(labeled))
        device = resolve_device(config.device)
        probabilities = out_of_fold_probabilities(
            config, dataset.to(device), torch.arange(len(labeled)), folds, config.seed, device
        )
        issues = find_label_issues(probabilities, given)
        listed = issues.order[:k].tolist()
        items = [
            BatchItem(
                labeled[i].id,
                labeled[i].path,
                classes[int(issues.suggested[i])],
                float(probabilities[i, issues.suggested[i]]),
                1.0 - float(issues.self_confidence[i]),  # doubt: higher = more doubtful, like a query's score
                rank,
                current_label=labeled[i].label,
            )
            for rank, i in enumerate(listed, 1)
        ]
        found = find_duplicates(conn, backbone, config.active.duplicate_threshold)
        batch = db.last_review(conn) + 1
        folder = review_folder(project, batch)
        write_atomic(folder / "batch.csv", batch_csv(items))
        write_atomic(folder / "label-studio.json", label_studio_tasks(items, f"lplgrad-review-{batch}", url_prefix))
        write_atomic(folder / "label-studio-config.xml", label_studio_config(classes))
        write_atomic(folder / "duplicates.csv", duplicates_csv(found))
        recorded = [
            (
                item.image_id,
                item.rank,
                str(item.current_label),
                str(item.suggested_label),
                float(issues.self_confidence[i]),
            )
            for item, i in zip(items, listed, strict=True)
        ]
        with db.transaction(conn):
            db.add_review(conn, batch, recorded)
        pool_images = db.counts(conn)["images"]
        agreement = float((probabilities.argmax(dim=1) == given).float().mean())
        return ReviewResult(
            batch, folder, len(labeled), int(issues.flagged.sum()), agreement, len(items), found, pool_images
        )


def duplicates_csv(found: Duplicates) -> str:
    """kind (pool | test-pool), the two paths, their ids, cosine similarity (1 for the same bytes)."""
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(["kind", "first_id", "first_path", "second_id", "second_path", "similarity"])
    for kind, pairs in (("test-pool", found.leaks), ("pool", found.pool_pairs)):
        for a, b, similarity in pairs:
            writer.writerow([kind, a.id, spreadsheet_text(a.path), b.id, spreadsheet_text(b.path), f"{similarity:.4f}"])
    return out.getvalue()
