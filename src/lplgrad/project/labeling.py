"""One answer at a time, for the web page: the current batch, answering, undoing, and what the
dashboard shows. Each change is its own short transaction (no project lock), so a person can keep
labeling while a round trains, and the CLI and the page can work on one project together."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError
from lplgrad.project import db


def current_batch(project: Path) -> list[dict[str, Any]]:
    """The newest round's queried images in rank order, each with its label (if answered)."""
    conn = db.connect(project)
    try:
        rounds = db.rounds(conn)
        if not rounds:
            return []
        latest = int(rounds[-1]["round"])
        images = {row.id: row for row in db.images(conn)}
        names = {i: name for i, name in conn.execute("SELECT id, name FROM classes")}
        return [
            {
                "id": row["image_id"],
                "path": images[row["image_id"]].path,
                "rank": row["rank"],
                "round": latest,
                "suggested": names.get(row["suggested_class_id"]),
                "confidence": row["confidence"],
                "label": images[row["image_id"]].label,
            }
            for row in db.queried_in(conn, latest)
        ]
    finally:
        conn.close()


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
            db.set_labels(conn, [(image, label, "web", db.last_round_of(conn).get(image), None, annotator)])
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
