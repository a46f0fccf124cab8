"""One answer at a time, for the web page: the current batch, answering, skipping, undoing, and what
the dashboard shows. Each change is its own short transaction (no project lock), so a person can keep
labeling while a round trains, and the CLI and the page can work on one project together.

The page never changes a label it did not write: an answer on an image that is labeled already (by
an import, an initial tree, another page) is refused, and an undo removes the page's own answer only
while that answer is still the image's label."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project import db
from lplgrad.project.images import ImageRefused, registered_bytes


class Conflict(UserError):
    """The request was well formed, but the project's state refuses it (HTTP 409)."""


@dataclass(frozen=True)
class Answer:
    """A label the page wrote, as undo must find it still: which image, which class, at what time."""

    image: int
    label: str
    time: str


def current_batch(project: Path) -> list[dict[str, Any]]:
    """What the page shows, in the order it shows it: the newest round's queried images by rank (the
    newest model's choice), then the images still unlabeled from earlier rounds by round and rank (a
    batch left half done is not lost). Images skipped in the newest round go after the others."""
    with closing(db.connect(project, readonly=True)) as conn, db.snapshot(conn):
        rounds = db.rounds(conn)
        if not rounds:
            return []
        latest = int(rounds[-1]["round"])
        queried = db.queried_images(conn)
        skipped = db.skipped_in(conn, latest)
    newest = [q for q in queried if q.round == latest]
    in_newest = {q.image.id for q in newest}
    earlier = [q for q in queried if q.round != latest and q.image.label is None and q.image.id not in in_newest]
    items = [
        {
            "id": q.image.id,
            "path": q.image.path,
            "rank": q.rank,
            "round": q.round,
            "suggested": q.suggested,
            "confidence": q.confidence,
            "label": q.image.label,
            "skipped": q.image.id in skipped,
        }
        for q in newest + earlier
    ]
    return [i for i in items if not i["skipped"]] + [i for i in items if i["skipped"]]


def answer(project: Path, image: int, label: str, annotator: str | None = None) -> Answer:
    """Label one unlabeled pool image (source 'web'); returns what undo needs to take it back."""
    label = unicodedata.normalize("NFC", label)
    with closing(db.connect(project)) as conn:
        if label not in db.classes(conn):
            raise UserError(f"unknown class {quoted(label)}")
        with db.transaction(conn):
            if db.image(conn, image, role="pool") is None:
                raise UserError(f"no image with id {image} to label")
            current = db.label_of(conn, image)
            if current is not None:
                raise Conflict(
                    f"image {image} is already labeled {quoted(current['label'])} ({current['source']}); "
                    "the page does not change labels: use lplgrad import --relabel"
                )
            written = Answer(image, label, db.now())
            db.set_labels(conn, [(image, label, "web", db.last_round(conn, image), written.time, annotator)])
    return written


def undo(project: Path, done: Answer) -> None:
    """Take back one of the page's answers, if it is still the image's label (else a Conflict)."""
    with closing(db.connect(project)) as conn, db.transaction(conn):
        current = db.label_of(conn, done.image)
        ours = current is not None and (current["label"], current["source"], current["time"]) == (
            done.label,
            "web",
            done.time,
        )
        if not ours:
            now = "unlabeled" if current is None else f"{quoted(current['label'])} ({current['source']})"
            raise Conflict(f"image {done.image} changed since the page labeled it (now {now}); nothing undone")
        db.restore_label(conn, done.image, None)


def skip(project: Path, image: int) -> None:
    """Skip an image of the current batch until the next round (it goes to the end of the batch)."""
    with closing(db.connect(project)) as conn, db.transaction(conn):
        rounds = db.rounds(conn)
        if not rounds or db.last_round(conn, image) is None:
            raise UserError(f"image {image} is in no batch")
        db.skip(conn, image, int(rounds[-1]["round"]))


def image_bytes(project: Path, image: int) -> tuple[bytes, str]:
    """(the registered bytes, the file's suffix) of an image, by id only (never from a path a request
    gives); raises ``ImageRefused`` when the file is gone or is not the one registered."""
    with closing(db.connect(project, readonly=True)) as conn:
        row = db.image(conn, image)
    if row is None:
        raise ImageRefused(404, f"no image {image}")
    return registered_bytes(row), Path(row.path).suffix.lower()


def dashboard(project: Path) -> dict[str, Any]:
    """Labels per class, accuracy (overall and per class) per round, and the classes each round's
    queried images turned out to be, in the project's class order."""
    with closing(db.connect(project, readonly=True)) as conn, db.snapshot(conn):
        names = db.classes(conn)
        found: dict[int, Counter[str]] = {}
        for round_index, name in db.queried_labels(conn):
            found.setdefault(round_index, Counter())[name] += 1
        return {
            "classes": names,
            "per_class": db.labels_per_class(conn),
            "rounds": [
                {
                    "round": r["round"],
                    "strategy": r["strategy"],
                    "labeled": r["labeled"],
                    "accuracy": r["accuracy"],
                    "accuracy_on": r["accuracy_on"],
                    "accuracy_low": r.get("accuracy_low"),
                    "accuracy_high": r.get("accuracy_high"),
                    "per_class_accuracy": per_class_accuracy(r, names),
                    "found": {n: c for n in names if (c := found.get(int(r["round"]), Counter())[n])},
                }
                for r in db.rounds(conn)
            ],
        }


def per_class_accuracy(round_row: dict[str, Any], names: list[str]) -> dict[str, float | None]:
    """A round's accuracy per class name (None for a class absent from the images it was measured on)."""
    stored = round_row.get("per_class_accuracy")
    values = json.loads(stored) if stored else [None] * len(names)
    return dict(zip(names, values, strict=False))
