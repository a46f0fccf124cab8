"""One answer at a time, for the web page: the current batch, answering, undoing, and what the
dashboard shows. Each change is its own short transaction (no project lock), so a person can keep
labeling while a round trains, and the CLI and the page can work on one project together."""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError
from lplgrad.project import db


def current_batch(project: Path) -> list[dict[str, Any]]:
    """The newest round's queried images in rank order, each with its label (if answered), after
    the images still unlabeled from earlier rounds (so a batch left half done is not lost)."""
    with closing(db.connect(project)) as conn:
        rounds = db.rounds(conn)
        if not rounds:
            return []
        latest = int(rounds[-1]["round"])
        queried = conn.execute("SELECT * FROM queried ORDER BY round, rank").fetchall()
        images = {row.id: row for row in db.images(conn, "WHERE images.id IN (SELECT image_id FROM queried)")}
        names = dict(conn.execute("SELECT id, name FROM classes").fetchall())
        shown = [q for q in queried if q["round"] == latest or images[q["image_id"]].label is None]
        return [
            {
                "id": q["image_id"],
                "path": images[q["image_id"]].path,
                "rank": q["rank"],
                "round": q["round"],
                "suggested": names.get(q["suggested_class_id"]),
                "confidence": q["confidence"],
                "label": images[q["image_id"]].label,
            }
            for q in shown
        ]


def answer(project: Path, image: int, label: str, annotator: str | None = None) -> dict[str, Any] | None:
    """Label one pool image (source 'web'); returns its label as it was before, for undo."""
    conn = db.connect(project)
    try:
        if label not in db.classes(conn):
            raise UserError(f"unknown class {label!r}")
        rows = db.images(conn, "WHERE images.id = ? AND images.role = 'pool'", (image,))
        if not rows:
            raise UserError(f"no image with id {image} to label")
        with db.transaction(conn):
            previous = db.label_of(conn, image)
            db.set_labels(conn, [(image, label, "web", db.last_round(conn, image), None, annotator)])
        return previous
    finally:
        conn.close()


def undo(project: Path, image: int, previous: dict[str, Any] | None) -> None:
    """Put an image's label back as ``answer`` found it."""
    conn = db.connect(project)
    try:
        with db.transaction(conn):
            db.restore_label(conn, image, previous)
    finally:
        conn.close()


def image_file(project: Path, image: int) -> Path | None:
    """The file of a registered image, by id only (never from a path a request gives)."""
    conn = db.connect(project)
    try:
        rows = db.images(conn, "WHERE images.id = ?", (image,))
        return rows[0].full_path if rows else None
    finally:
        conn.close()


def dashboard(project: Path) -> dict[str, Any]:
    """Labels per class, accuracy per round, and the classes each round's queried images turned out to be."""
    conn = db.connect(project)
    try:
        found: dict[int, Counter[str]] = {}
        for round_index, name in db.queried_labels(conn):
            found.setdefault(round_index, Counter())[name] += 1
        return {
            "classes": db.classes(conn),
            "per_class": db.labels_per_class(conn),
            "rounds": [
                {
                    "round": r["round"],
                    "strategy": r["strategy"],
                    "labeled": r["labeled"],
                    "accuracy": r["accuracy"],
                    "accuracy_on": r["accuracy_on"],
                    "found": dict(found.get(int(r["round"]), {})),
                }
                for r in db.rounds(conn)
            ],
        }
    finally:
        conn.close()
