"""``lplgrad review``: doubtful answers found by k-fold confident learning, a relabel batch that
imports back, the old labels kept; duplicates and leaks named; stopping in status."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from lplgrad.cli.main import main
from lplgrad.project import db, workflow
from lplgrad.project.duplicates import find_duplicates
from lplgrad.quality.duplicates import THRESHOLD
from tests.helpers import CLASSES, make_images, shape_images


def labeled_project(
    tmp_path: Path, count: int, flipped: list[int], settings: dict[str, object]
) -> tuple[Path, set[str]]:
    """A project whose every pool image is labeled, ``flipped`` ones (by position) with a wrong class."""
    truth = make_images(tmp_path / "pool", count)
    wrong = set()
    rows = []
    for i, (path, label) in enumerate(truth.items()):
        if i in flipped:
            label = CLASSES[(CLASSES.index(label) + 1) % 3]
            wrong.add(path)
        rows.append(f"{path},{label}\n")
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(rows))
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES, labels_csv=tmp_path / "labels.csv", settings=settings)
    return project, wrong


def workflow_rows(project: Path) -> list[db.ImageRow]:
    conn = db.connect(project, readonly=True)
    try:
        return db.pool_images(conn)
    finally:
        conn.close()


def read_batch(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(newline="")))


@pytest.mark.pretrained_default
def test_review_flags_the_flipped_answers_and_the_relabel_batch_imports_back(tmp_path: Path, capsys) -> None:
    flipped = [4, 17, 30, 41]
    project, wrong = labeled_project(tmp_path, 48, flipped, {"device": "cpu"})
    assert main(["-q", "review", str(project), "--k", "6", "--folds", "4"]) == 0
    out = capsys.readouterr().out
    assert "review 1: " in out and "--relabel" in out
    # Class-coloured noise all looks alike to an ImageNet backbone: status and review say so.
    assert "the backbone sees many different images as alike here; raise active.duplicate_threshold" in out
    batch = project / "batches" / "review-1" / "batch.csv"
    rows = read_batch(batch)
    listed = {row["path"] for row in rows}
    assert wrong <= listed, "every flipped answer is among the most doubtful"
    assert all(row["label"] != row["suggested_label"] for row in rows)
    # The person corrects the batch: the suggestion where the answer was wrong, the label kept elsewhere.
    rows_by_path = {row["path"]: dict(row) for row in rows}  # as review wrote them
    for row in rows:
        if row["path"] in wrong:
            row["label"] = row["suggested_label"]
    with batch.with_name("corrected.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["-q", "import", str(project), str(batch.with_name("corrected.csv"))]) == 2  # needs --relabel
    assert main(["-q", "import", str(project), str(batch.with_name("corrected.csv")), "--relabel"]) == 0
    assert f"{len(wrong)} relabeled" in capsys.readouterr().out
    with sqlite3.connect(project / "project.db") as conn:
        kept = conn.execute("SELECT COUNT(*) FROM relabeled WHERE old_source = 'csv'").fetchone()[0]
    assert kept == len(wrong), "the old labels are kept"
    # The untouched review file imported again never undoes those corrections.
    assert main(["-q", "import", str(project), str(batch), "--relabel"]) == 0
    assert "0 relabeled" in capsys.readouterr().out
    labels = {row.path: row.label for row in workflow_rows(project)}
    assert all(labels[path] != rows_by_path[path]["label"] for path in wrong)


def test_review_with_a_network_from_scratch_and_its_errors(tmp_path: Path, capsys) -> None:
    settings = {"train.epochs": 40, "model.width": 8, "train.min_steps": 0, "device": "cpu"}
    project, wrong = labeled_project(tmp_path, 45, [2, 13], settings)
    assert main(["-q", "review", str(project), "--k", "5", "--folds", "3"]) == 0
    listed = {row["path"] for row in read_batch(project / "batches" / "review-1" / "batch.csv")}
    assert wrong <= listed
    assert "exact duplicates (near ones need a pretrained backbone): 0 pairs" in capsys.readouterr().out
    assert main(["-q", "review", str(project), "--folds", "1"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err
    assert main(["-q", "review", str(project), "--folds", "30"]) == 2
    assert "at least 60 labeled images" in capsys.readouterr().err
    assert main(["-q", "review", str(project), "--folds", "20"]) == 2  # 15 images per class
    assert "lower --folds" in capsys.readouterr().err


@pytest.mark.pretrained_default
def test_copies_are_named_never_in_one_batch_and_a_test_copy_is_a_leak(tmp_path: Path, capsys) -> None:
    truth = shape_images(tmp_path / "pool", 24, seed=0)
    shape_images(tmp_path / "test", 6, seed=1, folders=True)
    first = sorted(truth)[0]
    shutil.copy(tmp_path / "pool" / first, tmp_path / "pool" / "copy-of-first.png")  # the same bytes
    image = Image.open(tmp_path / "pool" / first)
    image.resize((56, 56)).resize((64, 64)).save(tmp_path / "pool" / "resized-first.png")  # a near copy
    test_copy = sorted((tmp_path / "test").rglob("*.png"))[0]
    shutil.copy(test_copy, tmp_path / "pool" / "leaked.png")  # a test image in the pool
    project = tmp_path / "project"
    labels = {p: c for p, c in list(truth.items())[:6] if p != first}
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in labels.items()))
    workflow.init(
        project,
        tmp_path / "pool",
        CLASSES,
        labels_csv=tmp_path / "labels.csv",
        test=tmp_path / "test",
        settings={"device": "cpu"},
    )
    capsys.readouterr()
    unlabeled = str(27 - len(labels))
    assert main(["-q", "query", str(project), "--k", unlabeled, "--subset", unlabeled]) == 0  # all of them
    batch = {row["path"] for row in read_batch(project / "batches" / "round-1" / "batch.csv")}
    copies = {first, "copy-of-first.png", "resized-first.png"}
    assert len(batch & copies) == 1, "one batch holds one of a photo's copies"
    assert main(["-q", "status", str(project)]) == 0
    out = capsys.readouterr().out
    assert "~ pool image leaked.png (cosine 1.000): it inflates accuracy" in out
    conn = db.connect(project, readonly=True)
    found = find_duplicates(conn, db.feature_backbones(conn)[0], THRESHOLD)
    assert conn.execute("SELECT COUNT(*) FROM features WHERE compared = 0").fetchone()[0] == 0
    conn.close()
    pairs = {frozenset((a.path, b.path)) for a, b, _ in found.pool_pairs}
    assert {frozenset(p) for p in [(first, "copy-of-first.png"), (first, "resized-first.png")]} <= pairs


def test_stopping_compares_rounds_a_batch_apart_not_the_pages_rounds_every_few_answers() -> None:
    from lplgrad.project.stopping import spaced_rounds

    # The page: a round after every 5 answers, each with a batch of 20.
    rounds = [{"round": 1, "model_file": None, "labeled": 0, "queried": 20}] + [
        {"round": r, "model_file": f"models/round-{r}.pt", "labeled": 20 + 5 * (r - 2), "queried": 20}
        for r in range(2, 12)
    ]
    assert [r["labeled"] for r in spaced_rounds(rounds)] == [25, 45, 65]
    assert [r["round"] for r in spaced_rounds(rounds, labeled_now=75, batch_now=20)][-1] == 9  # 55 labels
    assert spaced_rounds(rounds, labeled_now=30, batch_now=20) == []  # nothing a batch before yet
