"""Answers that arrive from a Label Studio project (``lplgrad serve``), written to the project.

They go through ``import``'s resolution and validation (``workflow.resolve_labels``: the image by
``lplgrad_id`` or path, the class checked, the round it answered), against an image index read
once (``workflow.image_index``), and are written in short transactions (no project lock, as the
page's: labeling goes on while a round trains): one per webhook answer, one per chunk of a sync.

The labels ``serve`` writes carry the Label Studio project they came from: source ``label-studio``
and annotator ``ls:<Label Studio project id>:<user id>``. Only those labels follow that project's
annotations (an update changes such a label, a deleted annotation removes it). Any other label is
never changed, whoever wrote it (initial, csv, the page, ``lplgrad import`` of a Label Studio
export, another Label Studio project): an answer that contradicts it is a ``Conflict``, and it stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project import db
from lplgrad.project.exchange import LabelRecord
from lplgrad.project.labeling import Conflict
from lplgrad.project.workflow import ImageIndex, image_index, resolve_labels, write_labels

SOURCE = "label-studio"
CHUNK = 500  # tasks of a sync per transaction


class UnknownImage(UserError):
    """A task whose image is not in this project: Label Studio may hold other tasks; nothing is written."""


@dataclass(frozen=True)
class Change:
    image: int
    before: str | None
    after: str | None
    what: str  # "labeled", "relabeled", "removed", "unchanged", "skipped", "kept", "newer"


@dataclass
class SyncCounts:
    """What a sync of many tasks did; conflicts and unknown tasks are listed, not raised."""

    changes: list[Change] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # answers refused: another source's label, an unknown class
    unknown: list[str] = field(default_factory=list)  # tasks of no project image, or not readable as a task

    def count(self, what: str) -> int:
        return sum(1 for c in self.changes if c.what == what)


def annotator(ls_project: int, user: str | None) -> str:
    """The annotator a label ``serve`` writes carries: which Label Studio project, which user."""
    return f"ls:{ls_project}:{user or ''}"


def _written_by(current: dict[str, object], ls_project: int) -> bool:
    """Whether this label is one ``serve`` wrote for this Label Studio project."""
    return current["source"] == SOURCE and str(current.get("annotator") or "").startswith(f"ls:{ls_project}:")


def _writer(current: dict[str, object]) -> str:
    who = str(current.get("annotator") or "")
    if current["source"] != SOURCE:
        return str(current["source"])
    if who.startswith("ls:"):
        return f"Label Studio project {who.split(':')[1]}"
    return "label-studio (lplgrad import of an export)"


def match_images(project: Path, records: Iterable[LabelRecord]) -> list[db.ImageRow | str]:
    """Each task's image, or the reason it has none in this project (one read, no write)."""
    with closing(db.connect(project, readonly=True)) as conn:
        index = image_index(conn)
    found: list[db.ImageRow | str] = []
    for record in records:
        try:
            found.append(_find(index, record))
        except UnknownImage as error:
            found.append(str(error))
    return found


def record_answer(
    project: Path, ls_project: int, record: LabelRecord, mark: Callable[[int], None] | None = None
) -> Change:
    """Write one answer (an annotation created or updated) in one transaction. A skip (label None)
    writes nothing; an answer on an image another source labeled otherwise is a Conflict. ``mark``
    gets the image's id inside the transaction, before its label changes."""
    with closing(db.connect(project)) as conn:
        index = image_index(conn)  # read before the write transaction, which stays short
        with db.transaction(conn):
            return _write(conn, ls_project, index, db.last_round_of(conn), record, mark)


def remove_answer(
    project: Path, ls_project: int, record: LabelRecord, mark: Callable[[int], None] | None = None
) -> Change:
    """Take back this Label Studio project's label of one task's image (its answer was taken back,
    none is left); any other label stays (what "kept")."""
    with closing(db.connect(project)) as conn:
        row = _find(image_index(conn), record)
        with db.transaction(conn):
            return _remove(conn, ls_project, row, mark)


def sync_answers(
    project: Path,
    ls_project: int,
    tasks: list[tuple[LabelRecord, LabelRecord | None]],
    keep: Callable[[int], bool] | None = None,
    mark: Callable[[int], None] | None = None,
) -> SyncCounts:
    """Make this Label Studio project's labels match its tasks: (the task's reference, its current
    answer or None: no answer is left). An image ``keep`` names (its label was written after the
    tasks were read) is left as it is ("newer"). One transaction per CHUNK tasks; a task that
    cannot be written (no such image, another source's label, an unknown class) is listed and
    the others go on."""
    counts = SyncCounts()
    with closing(db.connect(project)) as conn:
        index = image_index(conn)
        for start in range(0, len(tasks), CHUNK):
            with db.transaction(conn):
                latest_round = db.last_round_of(conn)
                for reference, answer in tasks[start : start + CHUNK]:
                    try:
                        change = _sync_one(conn, ls_project, index, latest_round, reference, answer, keep, mark)
                        counts.changes.append(change)
                    except UnknownImage as error:
                        counts.unknown.append(str(error))
                    except UserError as error:  # a Conflict, an unknown class: nothing of this task was written
                        counts.conflicts.append(str(error))
    return counts


def _sync_one(
    conn: Any,
    ls_project: int,
    index: ImageIndex,
    latest_round: dict[int, int],
    reference: LabelRecord,
    answer: LabelRecord | None,
    keep: Callable[[int], bool] | None,
    mark: Callable[[int], None] | None,
) -> Change:
    row = _find(index, answer or reference)
    if keep is not None and keep(row.id):
        current = db.label_of(conn, row.id)
        label = None if current is None else str(current["label"])
        return Change(row.id, label, label, "newer")
    if answer is None:
        return _remove(conn, ls_project, row, mark)
    return _write(conn, ls_project, index, latest_round, answer, mark)


def _find(index: ImageIndex, record: LabelRecord) -> db.ImageRow:
    try:
        return index.find(record)
    except UserError as error:
        raise UnknownImage(str(error)) from None


def _write(
    conn: Any,
    ls_project: int,
    index: ImageIndex,
    latest_round: dict[int, int],
    record: LabelRecord,
    mark: Callable[[int], None] | None,
) -> Change:
    row = _find(index, record)
    current = db.label_of(conn, row.id)
    before = None if current is None else str(current["label"])
    if record.label is None:
        return Change(row.id, before, before, "skipped")
    if current is not None and not _written_by(current, ls_project) and before != record.label:
        raise Conflict(
            f"{record.line}: image {row.path} (id {row.id}) is labeled {quoted(before)} by {_writer(current)}; "
            f"Label Studio's {quoted(record.label)} is not written (lplgrad import --relabel changes it)"
        )
    ours = replace(record, source=SOURCE, annotator=annotator(ls_project, record.annotator))
    resolved = resolve_labels(index, [ours], True, "newest", latest_round, current=lambda _: before)
    if mark is not None:
        mark(row.id)
    write_labels(conn, resolved)
    counts = resolved.counts
    what = "labeled" if counts.labeled else "relabeled" if counts.relabeled else "unchanged"
    return Change(row.id, before, record.label, what)


def _remove(conn: Any, ls_project: int, row: db.ImageRow, mark: Callable[[int], None] | None) -> Change:
    current = db.label_of(conn, row.id)
    if current is None:
        return Change(row.id, None, None, "unchanged")
    before = str(current["label"])
    if not _written_by(current, ls_project):
        return Change(row.id, before, before, "kept")
    if mark is not None:
        mark(row.id)
    db.restore_label(conn, row.id, None)
    return Change(row.id, before, None, "removed")
