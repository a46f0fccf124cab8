"""The labeling project's commands other than querying: init, add, import, status, export.

Each command checks everything it was given before it writes, then writes in one database
transaction, under the project's folder lock: a bad input changes nothing, and a kill leaves the
project as it was before the command or after it.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import shutil
import unicodedata
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.models.backbones import backbone_spec
from lplgrad.project import db
from lplgrad.project.duplicates import describe, find_duplicates
from lplgrad.project.exchange import LabelRecord, csv_writer, parse_file, spreadsheet_text
from lplgrad.project.features import backbone_key
from lplgrad.project.images import find_images, moved_files, project_image_size, register
from lplgrad.project.labeling import per_class_accuracy
from lplgrad.project.settings import read_settings, resolve_settings, write_settings
from lplgrad.project.stopping import stopping_state
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.runtime.folder_lock import folder_lock

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped_files.txt"
DUPLICATES_FILE = "duplicates.txt"


def init(
    project: Path,
    images: Path,
    classes: list[str],
    labeled: Path | None = None,
    labels_csv: Path | None = None,
    test: Path | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Make a project: register the images (and an already labeled tree, and a test tree), the
    classes and the settings. Returns counts; refuses a folder that already holds a project."""
    names = _check_classes(classes)
    if (project / db.DB_FILE).exists() and _has_classes(project):  # also refuses a 0-byte or foreign file
        raise UserError(f"{project} already holds a project; use lplgrad add to register more images")
    config = resolve_settings(settings or {})
    for tree in (labeled, test):
        if tree is not None:
            _check_class_tree(tree, names)
    records = parse_file(str(labels_csv), _read(labels_csv)).records if labels_csv else []
    _check_separate_roots([tree for tree in (images, labeled, test) if tree is not None])
    found = _scan(images)  # everything is read before the project folder is touched
    extra = {tree: _scan(tree) for tree in (labeled, test) if tree is not None}
    all_sizes = found.sizes + [s for scanned in extra.values() for s in scanned.sizes]
    size = project_image_size(all_sizes, config.data.image_size)
    project.mkdir(parents=True, exist_ok=True)
    with folder_lock(project, "project"), closing(db.connect(project, create=True)) as conn:
        with db.transaction(conn):
            if db.classes(conn):  # another init finished between the check above and the lock
                raise UserError(f"{project} already holds a project; use lplgrad add to register more images")
            db.add_classes(conn, names)
            db.set_setting(conn, "image_size", str(size))
            counts = {"images": db.add_images(conn, db.root_id(conn, images.resolve()), "pool", found.files)}
            if labeled is not None:
                counts["labeled"] = _add_labeled_tree(conn, labeled, "pool", extra[labeled].files)
            if test is not None:
                counts["test"] = _add_labeled_tree(conn, test, "test", extra[test].files)
            if records:
                counts["csv_labels"] = _apply(conn, project, records, relabel=False, on_conflict="newest").labeled
            write_settings(project, config)  # before the commit: a committed project always has its settings
        skipped = found.bad + [b for scanned in extra.values() for b in scanned.bad]
        if skipped:
            write_atomic(project / SKIPPED_FILE, "\n".join(skipped) + "\n")
            log.warning("skipped %d file(s) that could not be decoded (listed in %s)", len(skipped), SKIPPED_FILE)
        _report_duplicates(conn, project)
    return {**counts, "skipped": len(skipped), "image_size": size}


def add(project: Path, images: Path, accept_changed: bool = False) -> dict[str, int]:
    """Register the images under ``images`` that the project does not have yet.

    A folder inside a registered pool folder is registered under it (the same image is never
    registered twice by two paths); a folder that holds or is inside the test images is refused (test
    images would be queried and trained on); pool folders inside ``images`` are left to their own
    registration. Registered images under ``images`` whose stat moved are checked by content: the
    same bytes are simply re-fingerprinted; other bytes are reported, and with ``accept_changed``
    registered as the image's new content (its label stays; relabel with ``import --relabel``)."""
    db.require_project(project)
    folder = images.resolve()
    found = _scan(images)
    with folder_lock(project, "project"), closing(db.connect(project)) as conn:
        same, changed = _moved_under(conn, folder)  # hashing before the write lock: the page keeps answering
        with db.transaction(conn):
            added, files = _register_new(conn, folder, found, db.roots(conn))
            db.update_fingerprints(conn, same + (changed if accept_changed else []))
        _report_duplicates(conn, project)
    if changed and not accept_changed:
        log.warning(
            "%d registered image(s) under %s now hold other bytes (e.g. %s); restore them, or register "
            "the new content with: lplgrad add %s --images %s --accept-changed",
            len(changed),
            images,
            changed[0][0],
            project,
            images,
        )
    counts = {"added": added, "already_registered": len(files) - added, "skipped": len(found.bad)}
    if same:
        counts["re-fingerprinted (same bytes)"] = len(same)
    if changed:
        counts["accepted with new content" if accept_changed else "changed (not accepted)"] = len(changed)
    return counts


def _register_new(
    conn: Any, folder: Path, found: _Scanned, registered: dict[str, set[str]]
) -> tuple[int, list[tuple[str, int, int, int, str]]]:
    """Register the found files not registered yet, under the right root (``_root_for``)."""
    root, prefix, inside = _root_for(folder, registered)
    files = [
        (f"{prefix}{path}", size, mtime, ctime, digest)
        for path, size, mtime, ctime, digest in found.files
        if not any((folder / path).is_relative_to(other) for other in inside)
    ]
    return db.add_images(conn, db.root_id(conn, root), "pool", files), files


def _root_for(folder: Path, registered: dict[str, set[str]]) -> tuple[Path, str, list[Path]]:
    """(the root to register ``folder``'s images under, the prefix of their paths, the registered pool
    folders inside ``folder`` whose images are not registered again); a UserError where ``folder``
    and the test images overlap."""
    for path, roles in registered.items():
        root = Path(path)
        if "test" in roles and (folder == root or root in folder.parents or folder in root.parents):
            raise UserError(f"{folder} overlaps the test images in {root}; test images are never added to the pool")
    for path in registered:
        root = Path(path)
        if folder == root or root in folder.parents:
            return root, f"{folder.relative_to(root).as_posix()}/" if folder != root else "", []
    return folder, "", [Path(p) for p in registered if folder in Path(p).parents]


def _moved_under(
    conn: Any, folder: Path
) -> tuple[list[tuple[int, int, int, int, str]], list[tuple[int, int, int, int, str]]]:
    """Registered images under ``folder`` whose stat moved: (fingerprints with the same bytes,
    fingerprints with other bytes), as (id, size, mtime, ctime, sha256)."""
    rows = [row for row in db.images(conn) if row.full_path.is_relative_to(folder) and row.full_path.is_file()]
    same: list[tuple[int, int, int, int, str]] = []
    changed: list[tuple[int, int, int, int, str]] = []
    for row, now in moved_files(rows):
        (same if now[-1] == row.sha256 else changed).append((row.id, *now))
    return same, changed


def _report_duplicates(conn: Any, project: Path) -> None:
    """Warn about registered images with the same bytes (copies, links), pool images identical to test
    images above all (they inflate the accuracy), and list them in DIR/duplicates.txt."""
    groups = db.duplicate_contents(conn)
    if not groups:
        (project / DUPLICATES_FILE).unlink(missing_ok=True)
        return
    leaks = [g for g in groups if {r.role for r in g} == {"pool", "test"}]
    lines = [" = ".join(f"{r.role}:{r.full_path}" for r in g) for g in groups]
    write_atomic(project / DUPLICATES_FILE, "\n".join(lines) + "\n")
    log.warning(
        "%d group(s) of registered images hold the same bytes (copies, links)%s; listed in %s",
        len(groups),
        f", {len(leaks)} of them a pool image identical to a test image (it inflates the accuracy)" if leaks else "",
        project / DUPLICATES_FILE,
    )


@dataclass
class ImportCounts:
    labeled: int = 0
    skipped: int = 0
    unchanged: int = 0
    relabeled: int = 0


def import_labels(project: Path, files: list[Path], relabel: bool = False, on_conflict: str = "newest") -> ImportCounts:
    """Labels from filled batch.csv files, other (path or id, label) CSVs, and Label Studio exports.
    Every row of every file is checked first; then one transaction writes them all."""
    db.require_project(project)
    records = [record for path in files for record in parse_file(str(path), _read(path)).records]
    with folder_lock(project, "project"), closing(db.connect(project)) as conn, db.transaction(conn):
        # All files at once, so "newest wins" and --on-conflict error hold across files too.
        return _apply(conn, project, records, relabel, on_conflict)


@dataclass(frozen=True)
class ImageIndex:
    """The project's images by id and by path, and its classes: what ``import`` resolves records
    against (``image_index``). Built once and passed around, so many records need one read."""

    by_id: dict[int, db.ImageRow]
    by_path: dict[str, list[db.ImageRow]]
    names: list[str]
    reviewed: dict[int, str] = field(default_factory=dict)  # image -> its label in the latest review batch

    def find(self, record: LabelRecord) -> db.ImageRow:
        return _find(record, self.by_id, self.by_path)


def image_index(conn: Any) -> ImageIndex:
    rows = db.images(conn)
    by_path: dict[str, list[db.ImageRow]] = {}
    for row in rows:
        by_path.setdefault(row.path, []).append(row)
        by_path.setdefault(str(row.full_path), []).append(row)
    batch = db.last_review(conn)
    reviewed = {item.image.id: item.given for item in db.review_items(conn, batch)} if batch else {}
    return ImageIndex({row.id: row for row in rows}, by_path, db.classes(conn), reviewed)


@dataclass
class ResolvedLabels:
    """What ``write_labels`` writes: the decided labels, the relabels to log, the answers that
    confirmed a label (a review batch's "kept"), and the counts."""

    counts: ImportCounts
    writes: list[tuple[int, str, str, int | None, str | None, str | None]]
    relabels: list[tuple[int, str]]
    confirmed: list[int]


def resolve_labels(
    index: ImageIndex,
    records: list[LabelRecord],
    relabel: bool,
    on_conflict: str,
    latest_round: dict[int, int],
    current: Callable[[int], str | None] | None = None,
) -> ResolvedLabels:
    """Match, validate and decide ``records`` against ``index`` (no SQL; raises before anything is
    written). ``latest_round``: ``db.last_round_of``; ``current``: an image's label now, where the
    index's may be older (default: the index's)."""
    label_now = current or (lambda image: index.by_id[image].label)
    answers: dict[int, list[LabelRecord]] = {}
    counts = ImportCounts()
    for record in records:
        row = index.find(record)
        if record.label is None:
            counts.skipped += 1
            continue
        if record.label not in index.names:
            close = difflib.get_close_matches(record.label, index.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"{record.line}: unknown class {quoted(record.label)}{hint}; the classes are {', '.join(index.names)}"
            )
        answers.setdefault(row.id, []).append(record)
    resolved = ResolvedLabels(counts, [], [], [])
    for image, given in answers.items():
        chosen = _resolve_answers(given, on_conflict)
        now = label_now(image)
        if index.reviewed.get(image) == chosen.label and now != chosen.label:
            # A review batch's label column is pre-filled with the label at review time: a row left
            # as it was must not undo a correction made since (the page's review mode, another file).
            log.warning("%s: image %s kept its label %r, changed since the review", chosen.line, image, now)
            counts.unchanged += 1
            continue
        if now == chosen.label:
            counts.unchanged += 1
            resolved.confirmed.append(image)
            continue
        if now is not None and not relabel:
            raise UserError(
                f"{chosen.line}: image {index.by_id[image].path} (id {image}) is already labeled {now!r}, "
                f"not {chosen.label!r}; add --relabel to change it"
            )
        if now is None:
            counts.labeled += 1
        else:
            counts.relabeled += 1
            resolved.relabels.append((image, str(chosen.label)))
        resolved.writes.append(
            (image, str(chosen.label), chosen.source, latest_round.get(image), chosen.time, chosen.annotator)
        )
    return resolved


def write_labels(conn: Any, resolved: ResolvedLabels) -> None:
    """Write what ``resolve_labels`` decided (inside the caller's transaction)."""
    db.log_relabels(conn, resolved.relabels)  # the old labels are kept, never lost
    db.decide_latest_review(conn, resolved.confirmed, [image for image, _ in resolved.relabels])
    db.set_labels(conn, resolved.writes)


def _apply(
    conn: Any,
    project: Path,
    records: list[LabelRecord],
    relabel: bool,
    on_conflict: str,
    index: ImageIndex | None = None,
) -> ImportCounts:
    """Resolve, validate and write ``records`` (inside the caller's transaction; raises before any write)."""
    resolved = resolve_labels(index or image_index(conn), records, relabel, on_conflict, db.last_round_of(conn))
    write_labels(conn, resolved)
    return resolved.counts


def _find(record: LabelRecord, by_id: dict[int, db.ImageRow], by_path: dict[str, list[db.ImageRow]]) -> db.ImageRow:
    if record.image_id is not None:
        row = by_id.get(record.image_id)
        if row is None:
            raise UserError(f"{record.line}: no image with id {record.image_id} in this project")
        same = record.path in (row.path, str(row.full_path)) or (record.path or "").endswith("/" + row.path)
        if record.path and not same:  # a file from another project?
            raise UserError(
                f"{record.line}: image id {record.image_id} is {quoted(row.path)} in this project, but the file says "
                f"{quoted(record.path)}; is it an export of another project?"
            )
        return row
    matches = by_path.get(record.path or "", []) or by_path.get((record.path or "").strip(), [])
    if len({m.id for m in matches}) != 1:
        what = "no image" if not matches else "several images"
        raise UserError(f"{record.line}: {what} with path {quoted(record.path)} in this project; give its id")
    return matches[0]


def _resolve_answers(given: list[LabelRecord], on_conflict: str) -> LabelRecord:
    """Several answers for one image: the newest wins, unless they disagree and that is an error."""
    if on_conflict == "error" and len({g.label for g in given}) > 1:
        raise UserError(
            f"{given[0].line}: the answers for one image disagree ({', '.join(sorted({str(g.label) for g in given}))});"
            " resolve them, or import without --on-conflict error to take the newest"
        )
    timed = [g for g in given if g.time]
    return max(timed, key=lambda g: str(g.time)) if len(timed) == len(given) else given[-1]


def status(project: Path, check: bool = False) -> dict[str, Any]:
    """Counts for people and for scripts (``lplgrad status --json``); read-only. With ``check``, the
    database is checked page by page first (``PRAGMA quick_check``), so damage is reported here."""
    with closing(db.connect(project, readonly=True)) as conn, db.snapshot(conn):
        if check:
            db.check_integrity(conn, project)
        counted = db.counts(conn)
        config = read_settings(project)
        pending = len(db.pending_ids(conn))  # pending images are unlabeled by definition
        names = db.classes(conn)
        rounds = db.rounds(conn)
        return {
            "images": counted["images"],
            "labeled": counted["labeled"],
            "pending": pending,
            "unlabeled": counted["images"] - counted["labeled"] - pending,
            "test_images": counted["test_images"],
            "classes": names,
            "per_class": db.labels_per_class(conn),
            "rounds": [
                {
                    k: r.get(k)
                    for k in (
                        "round",
                        "strategy",
                        "labeled",
                        "queried",
                        "accuracy",
                        "accuracy_on",
                        "accuracy_low",
                        "accuracy_high",
                        "ece",
                        "stop_kappa",
                        "stop_uncertainty",
                        "finished",
                    )
                }
                for r in rounds
            ],
            "stopping": stopping_state(rounds, config),
            "duplicates": describe(
                find_duplicates(conn, _backbone(conn, config), config.active.duplicate_threshold), counted["images"]
            ),
            # the newest round that measured one: where the weak classes are
            "per_class_accuracy": next(
                (per_class_accuracy(r, names) for r in reversed(rounds) if r.get("per_class_accuracy")), {}
            ),
        }


def _backbone(conn: Any, config: Any) -> str | None:
    """The feature-cache key of the project's pretrained backbone at its input size, None without
    one (or before any of its features exist)."""
    if config.train.finetune != "head":
        return None
    key = backbone_key(config, backbone_spec(config.model.backbone, config.model.input_size).image_size)
    return key if key in db.feature_backbones(conn) else None


def export_csv(project: Path, out: Path) -> int:
    """path, label, source, round, role of every labeled image (absolute paths); text cells that a
    spreadsheet would run as a formula are written as text (``exchange.spreadsheet_text``)."""
    with closing(db.connect(project, readonly=True)) as conn:
        rows = db.exported_labels(conn)
    text = io.StringIO()
    writer = csv_writer(text)
    writer.writerow(["path", "label", "source", "round", "role"])
    for path, label, source, round_index, role in rows:
        writer.writerow([spreadsheet_text(path), spreadsheet_text(label), source, round_index or "", role])
    write_atomic(out, text.getvalue())
    return len(rows)


PARTIAL_MARK = ".lplgrad-export-partial"


def export_imagefolder(project: Path, out: Path, copy: bool = False) -> int:
    """OUT/train/<class>/ (and OUT/test/<class>/ for test images) of symlinks (or copies) of the labeled
    images. Built in OUT.partial and renamed to OUT when complete, so an interrupted export leaves no
    half-filled OUT, and running it again starts OUT.partial afresh."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not an empty folder; choose a new one")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        if not (partial / PARTIAL_MARK).is_file():
            raise UserError(f"{partial} exists and is not an unfinished lplgrad export; move it away")
        try:
            shutil.rmtree(partial)
        except OSError as error:
            raise UserError(f"cannot remove the unfinished export {partial}: {error.strerror or error}") from None
    with closing(db.connect(project, readonly=True)) as conn:
        labeled = [row for row in db.images(conn) if row.label is not None]
    try:
        partial.mkdir(parents=True)
        (partial / PARTIAL_MARK).touch()
    except OSError as error:
        raise UserError(f"cannot write {partial}: {error.strerror or error}") from None
    for row in labeled:
        split = "train" if row.role == "pool" else "test"
        target = partial / split / row.label / f"{row.id}-{Path(row.path).name}"  # type: ignore[operator]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(row.full_path, target)
            else:
                os.symlink(row.full_path, target)
        except OSError as error:
            raise UserError(f"cannot export {row.full_path} to {target}: {error.strerror or error}") from None
    try:
        (partial / PARTIAL_MARK).unlink()
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except OSError as error:
        raise UserError(f"cannot move the finished export {partial} to {out}: {error.strerror or error}") from None
    return len(labeled)


# ---- helpers


@dataclass(frozen=True)
class _Scanned:
    files: list[tuple[str, int, int, int, str]]
    bad: list[str]
    sizes: list[tuple[int, int]]


def _scan(root: Path) -> _Scanned:
    paths = find_images(root)
    if not paths:
        raise UserError(f"no image files under {root}")
    real_root = root.resolve()
    outside = [p for p in paths if p.is_symlink() and real_root not in p.resolve().parents]
    if outside:  # the page serves only files inside their images folder
        log.warning(
            "%d image(s) under %s are links to files outside it (e.g. %s): they are trained on, but the "
            "labeling page will not show them",
            len(outside),
            root,
            outside[0],
        )
    files, bad, sizes = register(root, paths)  # paths relative to the root as found, links not followed out
    return _Scanned(files, [f"{root}/{b}" for b in bad], sizes)


def _add_labeled_tree(conn: Any, tree: Path, role: str, files: list[tuple[str, int, int, int, str]]) -> int:
    """Register a tree of class folders with each image labeled by its folder (source 'initial')."""
    root = db.root_id(conn, tree.resolve())
    db.add_images(conn, root, role, files)
    rows = [(db.image_id(conn, root, path), path.split("/", 1)[0], "initial", None, None, None) for path, *_ in files]
    db.set_labels(conn, rows)  # type: ignore[arg-type]
    return len(rows)


def _check_separate_roots(trees: list[Path]) -> None:
    """--images, --labeled and --test must not contain one another (an image would be registered
    twice, e.g. test images queried and trained on)."""
    resolved = [tree.resolve() for tree in trees]
    for i, a in enumerate(resolved):
        for b in resolved[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise UserError(f"{a} and {b} overlap; --images, --labeled and --test must be separate folders")


def _check_classes(classes: list[str]) -> list[str]:
    names = [unicodedata.normalize("NFC", c.strip()) for c in classes if c.strip()]
    unsafe = [n for n in names if "/" in n or "\\" in n or n.startswith(".")]
    if unsafe:
        raise UserError(f"class names cannot hold / or \\ or start with a dot: {', '.join(unsafe)}")
    if len(names) < 2:
        raise UserError(f"a project needs at least two classes, got {names}")
    if len(set(names)) != len(names):
        raise UserError(f"classes are listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return names


def _check_class_tree(tree: Path, names: list[str]) -> None:
    if not tree.is_dir():
        raise UserError(f"{tree} does not exist or is not a folder")
    folders = sorted(d.name for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise UserError(f"{tree} has class folders that are not project classes: {', '.join(unknown)}")
    loose = [f.name for f in tree.iterdir() if f.is_file() and not f.name.startswith(".")]
    if loose:
        raise UserError(f"{tree} should hold one folder per class; found files at its top: {', '.join(loose[:3])}")


def _has_classes(project: Path) -> bool:
    """Whether an init finished here (an interrupted one left at most a database with the schema and
    no classes). A file that is not a project database (0 bytes, another program's) is a UserError."""
    with closing(db.connect(project)) as conn:
        return bool(db.classes(conn))


def _read(path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
