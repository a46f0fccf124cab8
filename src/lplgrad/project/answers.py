"""Answers that arrive one at a time from Label Studio (``lplgrad serve``), written to the project.

Each answer is its own short transaction (no project lock, as the page's: labeling goes on while a
round trains) and goes through ``import``'s resolution and validation (``workflow._find`` and
``workflow._apply``: the image by ``lplgrad_id`` or path, the class checked, the round it answered).
The labels Label Studio wrote follow its annotations: an update changes such a label, a deleted
annotation removes it. A label another source wrote (initial, csv, the page) is never changed:
that is a ``Conflict``, and the label stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project import db
from lplgrad.project.exchange import LabelRecord
from lplgrad.project.labeling import Conflict
from lplgrad.project.workflow import _apply, _find

log = logging.getLogger(__name__)

SOURCE = "label-studio"


class UnknownImage(UserError):
    """A task whose image is not in this project: Label Studio may hold other tasks; nothing is written."""


@dataclass(frozen=True)
class Change:
    image: int
    before: str | None
    after: str | None
    what: str  # "labeled", "relabeled", "removed", "unchanged", "skipped", "kept"


@dataclass
class SyncCounts:
    """What a sync of many tasks did; conflicts and unknown tasks are listed, not raised."""

    changes: list[Change] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def count(self, what: str) -> int:
        return sum(1 for c in self.changes if c.what == what)


class _Index:
    """The project's images by id and by path, as ``import`` matches them."""

    def __init__(self, rows: list[db.ImageRow]) -> None:
        self.by_id = {row.id: row for row in rows}
        self.by_path: dict[str, list[db.ImageRow]] = {}
        for row in rows:
            self.by_path.setdefault(row.path, []).append(row)
            self.by_path.setdefault(str(row.full_path), []).append(row)

    def find(self, record: LabelRecord) -> db.ImageRow:
        try:
            return _find(record, self.by_id, self.by_path)
        except UserError as error:
            raise UnknownImage(str(error)) from None


def match_images(project: Path, records: Iterable[LabelRecord]) -> list[db.ImageRow | str]:
    """Each task's image, or the reason it has none in this project (one read, no write)."""
    with closing(db.connect(project, readonly=True)) as conn:
        index = _Index(db.images(conn))
    found: list[db.ImageRow | str] = []
    for record in records:
        try:
            found.append(index.find(record))
        except UnknownImage as error:
            found.append(str(error))
    return found


def record_answer(project: Path, record: LabelRecord) -> Change:
    """Write one answer (an annotation created or updated) in one transaction. A skip (label None)
    writes nothing; an answer on an image another source labeled otherwise is a Conflict."""
    with closing(db.connect(project)) as conn, db.transaction(conn):
        return _write(conn, project, _Index(db.images(conn)), record)


def remove_answer(project: Path, record: LabelRecord) -> Change:
    """Take back Label Studio's label of one task's image (its annotation was deleted, no answer is
    left); a label of another source stays (what "kept")."""
    with closing(db.connect(project)) as conn, db.transaction(conn):
        return _remove(conn, _Index(db.images(conn)).find(record))


def sync_answers(project: Path, tasks: list[tuple[LabelRecord, LabelRecord | None]]) -> SyncCounts:
    """Make the project's Label Studio labels match Label Studio's tasks: (the task's reference, its
    current answer or None). One transaction per task, so a busy or failing one loses no other."""
    counts = SyncCounts()
    with closing(db.connect(project)) as conn:
        index = _Index(db.images(conn))
        for reference, answer in tasks:
            try:
                with db.transaction(conn):
                    if answer is None:
                        counts.changes.append(_remove(conn, index.find(reference)))
                    else:
                        counts.changes.append(_write(conn, project, index, answer))
            except UnknownImage as error:
                counts.unknown.append(str(error))
            except Conflict as error:
                counts.conflicts.append(str(error))
    return counts


def _write(conn: Any, project: Path, index: _Index, record: LabelRecord) -> Change:
    row = index.find(record)
    current = db.label_of(conn, row.id)
    before = None if current is None else str(current["label"])
    if record.label is None:
        return Change(row.id, before, before, "skipped")
    if current is not None and current["source"] != SOURCE and before != record.label:
        raise Conflict(
            f"{record.line}: image {row.path} (id {row.id}) is labeled {quoted(before)} by {current['source']}; "
            f"Label Studio's {quoted(record.label)} is not written (lplgrad import --relabel changes it)"
        )
    counts = _apply(conn, project, [record], relabel=True, on_conflict="newest")
    what = "labeled" if counts.labeled else "relabeled" if counts.relabeled else "unchanged"
    return Change(row.id, before, record.label, what)


def _remove(conn: Any, row: db.ImageRow) -> Change:
    current = db.label_of(conn, row.id)
    if current is None:
        return Change(row.id, None, None, "unchanged")
    before = str(current["label"])
    if current["source"] != SOURCE:
        return Change(row.id, before, before, "kept")
    db.restore_label(conn, row.id, None)
    return Change(row.id, before, None, "removed")
