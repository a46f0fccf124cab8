"""The page's review mode: the latest ``lplgrad review`` batch, one doubtful answer at a time.

A person keeps an answer or changes it. The page changes a label only here, and only when all of
this holds: the image is in the latest review batch and not decided yet, and its label is still the
one the page showed (``expected``), so an import or another tab that changed it meanwhile is never
overwritten (a Conflict). The old label is kept in the database (``relabeled``)."""

from __future__ import annotations

import unicodedata
from contextlib import closing
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project import db
from lplgrad.project.labeling import Conflict


def review_batch(project: Path) -> list[dict[str, Any]]:
    """The latest review batch's undecided answers, most doubtful first."""
    with closing(db.connect(project, readonly=True)) as conn, db.snapshot(conn):
        batch = db.last_review(conn)
        items = db.review_items(conn, batch) if batch else []
    return [
        {
            "id": item.image.id,
            "path": item.image.path,
            "batch": item.batch,
            "rank": item.rank,
            "label": item.image.label,
            "suggested": item.suggested,
            "doubt": 1.0 - item.self_confidence,
        }
        for item in items
        if item.decision is None and item.image.label == item.given
    ]


def review_answer(project: Path, image: int, label: str, expected: str) -> str:
    """Keep (``label == expected``) or change one answer of the latest review batch; returns the
    decision, "kept" or "relabeled"."""
    label, expected = unicodedata.normalize("NFC", label), unicodedata.normalize("NFC", expected)
    with closing(db.connect(project)) as conn:
        if label not in db.classes(conn):
            raise UserError(f"unknown class {quoted(label)}")
        with db.transaction(conn):
            batch = db.last_review(conn)
            item = next((i for i in db.review_items(conn, batch) if i.image.id == image), None) if batch else None
            if item is None:
                raise UserError(f"image {image} is not in the latest review batch")
            if item.decision is not None:
                raise Conflict(f"image {image} was reviewed already ({item.decision})")
            current = db.label_of(conn, image)
            if current is None or current["label"] != expected:
                now = "unlabeled" if current is None else f"{quoted(current['label'])} ({current['source']})"
                raise Conflict(f"image {image} changed since the page showed it (now {now}); nothing changed")
            if label == expected:
                db.decide_review(conn, batch, image, "kept")
                return "kept"
            db.log_relabels(conn, [(image, label)])
            db.set_labels(conn, [(image, label, "web", current["round"], db.now(), None)])  # type: ignore[list-item]
            db.decide_review(conn, batch, image, "relabeled")
            return "relabeled"
