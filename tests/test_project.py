"""The labeling project end to end on generated images, the real Label Studio exports, and bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lplgrad.cli.main import main
from lplgrad.errors import UserError
from lplgrad.project import db, workflow
from lplgrad.project.query import query
from lplgrad.runtime.folder_lock import folder_lock
from tests.helpers import CLASSES, TINY, make_images

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio"  # real Label Studio 1.23.2 exports (README there)


def fill(batch: Path, truth: dict[str, str]) -> Path:
    """The person's work: batch.csv with the label column filled from the true classes."""
    rows = list(csv.DictReader(batch.open()))
    for row in rows:
        row["label"] = truth[row["path"]]
    filled = batch.with_name("filled.csv")
    with filled.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return filled


def run(*args: str) -> int:
    return main(["-q", *args])


def test_rounds_of_labeling_end_to_end(tmp_path: Path, capsys) -> None:
    truth = make_images(tmp_path / "pool", 60)
    make_images(tmp_path / "test", 12, seed=1, folders=True)
    (tmp_path / "pool" / "broken.png").write_bytes(b"not an image")
    project = tmp_path / "project"
    assert (
        run(
            "init",
            str(project),
            "--images",
            str(tmp_path / "pool"),
            "--classes",
            "red,green,blue",
            "--test",
            str(tmp_path / "test"),
            *TINY,
        )
        == 0
    )
    assert "60 images, 12 test, 1 skipped" in capsys.readouterr().out
    assert (project / "skipped_files.txt").read_text().strip().endswith("broken.png")

    queried: list[int] = []
    for round_index, strategy in enumerate(["lplgrad", "lplgrad", "entropy"], start=1):
        assert run("query", str(project), "--k", "8", "--strategy", strategy) == 0
        out = capsys.readouterr().out
        batch = project / "batches" / f"round-{round_index}" / "batch.csv"
        ids = [int(row["id"]) for row in csv.DictReader(batch.open())]
        assert len(ids) == 8 and not set(ids) & set(queried), "no image is queried twice"
        queried += ids
        if round_index == 1:
            assert "cold start" in out
        else:
            assert f"trained on {8 * (round_index - 1)}" in out and "on the test images" in out
        tasks = json.loads((project / "batches" / f"round-{round_index}" / "label-studio.json").read_text())
        assert [t["data"]["lplgrad_id"] for t in tasks] == ids
        # A second query before importing skips the pending images.
        if round_index == 1:
            status = workflow.status(project)
            assert (status["pending"], status["labeled"]) == (8, 0)
        assert run("import", str(project), str(fill(batch, truth))) == 0
        assert "8 labeled, 0 skipped, 0 unchanged, 0 relabeled" in capsys.readouterr().out

    status = workflow.status(project)
    assert (status["images"], status["labeled"], status["pending"], status["test_images"]) == (60, 24, 0, 12)
    assert sum(status["per_class"].values()) == 24
    rounds = status["rounds"]
    assert [r["labeled"] for r in rounds] == [0, 8, 16]
    assert rounds[0]["accuracy"] is None and all(r["accuracy_on"] == "test" for r in rounds[1:])
    assert run("status", str(project), "--json") == 0
    assert json.loads(capsys.readouterr().out)["labeled"] == 24
    # Stopping and calibration are stored with each trained round: kappa from the second one on.
    assert rounds[1]["stop_kappa"] is None and -1 <= rounds[2]["stop_kappa"] <= 1
    assert all(r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] for r in rounds[1:])
    assert [c["name"] for c in status["stopping"]["criteria"]][:2] == ["stable predictions", "low uncertainty"]
    assert run("status", str(project)) == 0
    out = capsys.readouterr().out
    assert "when to stop: " in out and "keep labeling" in out and "expected calibration error" in out

    assert run("export", str(project), "--out", str(tmp_path / "labels.csv")) == 0
    exported = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert len(exported) == 24 + 12 and {r["source"] for r in exported} == {"csv", "initial"}
    assert run("export", str(project), "--format", "imagefolder", "--out", str(tmp_path / "folders")) == 0
    assert len(list((tmp_path / "folders" / "train").rglob("*.png"))) == 24
    assert run("predict", str(project), str(tmp_path / "test"), "--out", str(tmp_path / "predictions.csv")) == 0
    predictions = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(predictions) == 12 and set(predictions[0]) >= {"path", "predicted", "confidence", *CLASSES}


def label_studio_project(tmp_path: Path) -> Path:
    """A project whose images have the ids and paths of the fixture's tasks (lplgrad_id 1..5)."""
    root = tmp_path / "images"
    paths = [
        "pool/tshirt/0000.png",
        "pool/trouser/0001.png",
        "pool/pullover/0002.png",
        "pool/tshirt/0003.png",
        "pool/trouser/0004.png",
    ]
    project = tmp_path / "project"
    for number, relative in enumerate(paths):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (number * 40, 0, 0)).save(root / relative)
        if number == 0:
            workflow.init(project, root, ["T-shirt", "Trouser", "Pullover"])
        else:
            workflow.add(project, root)  # one at a time, so the ids follow the fixture's
    conn = db.connect(project)
    assert [(row.id, row.path) for row in db.images(conn)] == list(enumerate(paths, start=1))
    return project


@pytest.mark.parametrize(
    ("name", "skipped"), [("export-JSON.json", 1), ("export-JSON_MIN.json", 0), ("export-CSV.csv", 0)]
)
def test_real_label_studio_exports(tmp_path: Path, name: str, skipped: int) -> None:
    project = label_studio_project(tmp_path)
    with pytest.raises(UserError, match="disagree"):
        workflow.import_labels(project, [FIXTURES / name], on_conflict="error")
    assert workflow.status(project)["labeled"] == 0
    counts = workflow.import_labels(project, [FIXTURES / name])
    assert (counts.labeled, counts.skipped) == (4, skipped)
    conn = db.connect(project)
    labels = {row.id: row.label for row in db.images(conn)}
    # Task 4 had two answers, T-shirt then Pullover: the newest wins. Task 5 was skipped.
    assert labels == {1: "T-shirt", 2: "Trouser", 3: "Pullover", 4: "Pullover", 5: None}
    sources = {row[0] for row in conn.execute("SELECT source FROM labels")}
    assert sources == {"label-studio"}


@pytest.fixture
def labeled_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    truth = make_images(tmp_path / "pool", 12)
    project = tmp_path / "project"
    workflow.init(
        project, tmp_path / "pool", CLASSES, settings={"train.epochs": 1, "model.width": 4, "train.min_steps": 0}
    )
    first = {p: truth[p] for p in list(truth)[:3]}
    (tmp_path / "first.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in first.items()))
    workflow.import_labels(project, [tmp_path / "first.csv"])
    return project, truth


def snapshot(project: Path) -> list[tuple[object, ...]]:
    conn = db.connect(project)
    return [tuple(r) for r in conn.execute("SELECT image_id, class_id, source, round FROM labels ORDER BY image_id")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label\n000.png,redd\n", "unknown class 'redd' (did you mean 'red'?); the classes are red, green, blue"),
        ("id,label\n999,red\n", "no image with id 999"),
        ("path,label\nnope.png,red\n", "no image with path 'nope.png'"),
        ("path,label\n000.png,green\n", "already labeled 'red', not 'green'; add --relabel"),
        ("", "is empty"),
        ("name,colour\nx,y\n", "expected a label column"),
        ('[{"data": {}}]', "a task needs data.lplgrad_id or data.image"),
        ("{not json", "is not valid JSON"),
        ("id,label\nseven,red\n", "image id 'seven' is not a positive integer"),
    ],
)
def test_bad_imports_are_one_line_errors_that_change_nothing(tmp_path, labeled_project, capsys, content, message):
    project, _ = labeled_project
    before = snapshot(project)
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    good = tmp_path / "good.csv"
    good.write_text("path,label\nsub/001.png,green\n")
    assert run("import", str(project), str(good), str(bad)) == 2  # the good file is not imported either
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lplgrad: error: ") and message in err[0]
    assert snapshot(project) == before


def test_csv_with_bom_crlf_and_extra_columns_imports(tmp_path, labeled_project) -> None:
    project, truth = labeled_project
    body = "\r\n".join(["label,path,notes", f"{truth['sub/003.png']},sub/003.png,hello", ""])
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    counts = workflow.import_labels(project, [tmp_path / "excel.csv"])
    assert counts.labeled == 1


def test_relabel_and_unchanged(tmp_path, labeled_project) -> None:
    project, _ = labeled_project
    (tmp_path / "again.csv").write_text("path,label\n000.png,red\n000.png,blue\n")
    with pytest.raises(UserError, match="already labeled"):
        workflow.import_labels(project, [tmp_path / "again.csv"])
    counts = workflow.import_labels(project, [tmp_path / "again.csv"], relabel=True)
    assert (counts.relabeled, counts.unchanged) == (1, 0)


def test_a_busy_project_and_a_changed_image_are_named(tmp_path, labeled_project) -> None:
    project, _ = labeled_project
    with folder_lock(project, "project"), pytest.raises(UserError, match=r"project .* is busy: pid \d+"):
        workflow.add(project, tmp_path / "pool")
    (tmp_path / "pool" / "sub" / "001.png").write_bytes((tmp_path / "pool" / "000.png").read_bytes() + b"x")
    with pytest.raises(UserError, match=r"sub/001.png \(id \d+\) changed since it was registered"):
        query(project, "random", k=2)


def test_query_refuses_more_than_the_unlabeled_images(labeled_project) -> None:
    project, _ = labeled_project
    with pytest.raises(UserError, match="only 9 unlabeled images can be queried"):
        query(project, "random", k=10)


def test_embed_a_project_then_typiclust_and_probcover_query_with_its_features(tmp_path, capsys) -> None:
    truth = make_images(tmp_path / "pool", 30)
    first = list(truth.items())[:9]
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in first))
    project, features, index = tmp_path / "project", tmp_path / "features.npy", tmp_path / "features.csv"
    init = ["init", str(project), "--images", str(tmp_path / "pool"), "--classes", "red,green,blue", *TINY]
    settings = ["--set", f"active.embeddings={features}", "--set", f"active.embeddings_index={index}"]
    assert run(*init, *settings, "--labels", str(tmp_path / "labels.csv")) == 0
    assert run("embed", "--project", str(project), "--epochs", "1", "--batch-size", "8", "--out", str(features)) == 0
    lines = index.read_text().splitlines()
    assert lines[0] == "path,row" and len(lines) == 31
    assert {line.rsplit(",", 1)[0] for line in lines[1:]} == {(tmp_path / "pool" / p).as_posix() for p in truth}
    for strategy in ("typiclust", "probcover"):
        assert run("query", str(project), "--k", "4", "--strategy", strategy, "--include-pending") == 0
    capsys.readouterr()
    # Images added after the embedding have no row: a one-line error that says what to do.
    make_images(tmp_path / "more", 3, seed=5)
    assert run("add", str(project), "--images", str(tmp_path / "more")) == 0
    assert run("query", str(project), "--k", "4", "--strategy", "typiclust", "--subset", "100") == 2
    assert "has no row for 3 training image(s)" in capsys.readouterr().err


def test_a_project_needs_an_embeddings_index_and_embed_takes_its_settings(tmp_path, capsys) -> None:
    make_images(tmp_path / "pool", 6)
    project = tmp_path / "project"
    init = ["init", str(project), "--images", str(tmp_path / "pool"), "--classes", "red,green,blue"]
    assert run(*init, "--set", f"active.embeddings={tmp_path / 'features.npy'}") == 0
    assert run("query", str(project), "--k", "2") == 2
    assert "active.embeddings needs active.embeddings_index" in capsys.readouterr().err
    assert not (project / "batches").exists()
    out = str(tmp_path / "f.npy")
    assert run("embed", "--project", str(project), "--dataset", "digits", "--out", out) == 2
    assert "embed --project uses the project's settings" in capsys.readouterr().err


def test_init_refuses_an_existing_project_and_unknown_class_folders(tmp_path, labeled_project) -> None:
    project, _ = labeled_project
    with pytest.raises(UserError, match="already holds a project"):
        workflow.init(
            project, tmp_path / "pool", CLASSES, settings={"train.epochs": 1, "model.width": 4, "train.min_steps": 0}
        )
    tree = tmp_path / "labeled"
    make_images(tree, 3, folders=True)
    shutil.move(tree / "red", tree / "crimson")
    with pytest.raises(UserError, match="not project classes: crimson"):
        workflow.init(tmp_path / "other", tmp_path / "pool", CLASSES, labeled=tree)


def test_a_second_query_skips_pending_images_unless_asked(labeled_project) -> None:
    project, _ = labeled_project
    first = query(project, "random", k=4)
    second = query(project, "random", k=4)
    batches = [{int(row["id"]) for row in csv.DictReader((r.folder / "batch.csv").open())} for r in (first, second)]
    assert not batches[0] & batches[1]
    with pytest.raises(UserError, match="only 1 unlabeled images can be queried"):
        query(project, "random", k=2)
    assert query(project, "random", k=2, include_pending=True).queried == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[{"data": {"lplgrad_id": 1}, "annotations": ["oops"]}]',
            "Label Studio export: .str. object has no attribute",
        ),
        (
            '[{"data": {"lplgrad_id": 1}, "annotations": [{"result": [{"value": {"choices": ["red", "blue"]}}]}]}]',
            "one class per image expected",
        ),
        ("[1, 2]", "expected a list of Label Studio tasks"),
    ],
)
def test_malformed_label_studio_files_are_one_line_errors(tmp_path, labeled_project, content, message) -> None:
    project, _ = labeled_project
    before = snapshot(project)
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(UserError, match=message):
        workflow.import_labels(project, [tmp_path / "bad.json"])
    assert snapshot(project) == before


def test_label_studio_urls_of_awkward_file_names_come_back(tmp_path: Path) -> None:
    from lplgrad.project.exchange import BatchItem, label_studio_tasks, parse_label_studio_json

    items = [BatchItem(1, "a b/c&d+e#f%.png", "red", 0.5, 1.0, 1)]
    task = json.loads(label_studio_tasks(items, "v"))[0]
    task["annotations"] = [{"result": [{"value": {"choices": ["red"]}}], "was_cancelled": False}]
    (record,) = parse_label_studio_json("x", json.dumps([task]))
    assert (record.image_id, record.path, record.label) == (1, "a b/c&d+e#f%.png", "red")


def test_init_refuses_overlapping_folders_and_unsafe_class_names(tmp_path: Path) -> None:
    make_images(tmp_path / "pool", 6)
    make_images(tmp_path / "pool" / "test", 3, folders=True)
    with pytest.raises(UserError, match="overlap"):
        workflow.init(tmp_path / "p1", tmp_path / "pool", CLASSES, test=tmp_path / "pool" / "test")
    with pytest.raises(UserError, match="cannot hold / or"):
        workflow.init(tmp_path / "p2", tmp_path / "pool", ["red", "../blue"])
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_commands_on_a_folder_that_is_no_project(tmp_path: Path, capsys) -> None:
    assert run("query", str(tmp_path / "nothing"), "--k", "2") == 2
    assert "is not an lplgrad project" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_answers_in_two_files_are_resolved_together(tmp_path, labeled_project) -> None:
    project, _ = labeled_project
    (tmp_path / "a.csv").write_text("path,label,updated_at\nsub/003.png,red,2026-01-01T00:00:00Z\n")
    (tmp_path / "b.csv").write_text("path,label,updated_at\nsub/003.png,blue,2026-01-02T00:00:00Z\n")
    with pytest.raises(UserError, match="disagree"):
        workflow.import_labels(project, [tmp_path / "b.csv", tmp_path / "a.csv"], on_conflict="error")
    counts = workflow.import_labels(project, [tmp_path / "b.csv", tmp_path / "a.csv"])
    assert counts.labeled == 1
    conn = db.connect(project)
    assert {row.path: row.label for row in db.images(conn)}["sub/003.png"] == "blue"  # the newest
