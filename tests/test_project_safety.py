"""The labeling project never serves a file or changes a label it should not, and every bad path is a
one-line error that loses nothing (issue 22: each case failed before its fix)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lplgrad.cli.main import main
from lplgrad.cli.project import allowed_hosts
from lplgrad.errors import UserError
from lplgrad.project import db, workflow
from lplgrad.project.exchange import parse_file
from lplgrad.project.query import query
from lplgrad.web.app import create_app
from tests.helpers import CLASSES, make_images

SETTINGS = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}


def run(*args: str) -> int:
    return main(["-q", *args])


def one_error(capsys) -> str:
    """The only line on stderr, which must be a one-line lplgrad error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lplgrad: error: "), err
    return err[0]


def labels_of(project: Path) -> dict[int, tuple[str, str]]:
    conn = db.connect(project, readonly=True)
    try:
        return {
            row.id: (str(row.label), str(db.label_of(conn, row.id)["source"])) for row in db.images(conn) if row.label
        }  # type: ignore[index]
    finally:
        conn.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_images(tmp_path / "pool", 30)
    make_images(tmp_path / "test", 6, seed=1, folders=True)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=SETTINGS)
    query(project, "random", k=5)
    return project


@pytest.fixture
def page(project: Path) -> tuple[TestClient, str]:
    client = TestClient(create_app(project, "random", k=4), base_url="http://127.0.0.1")
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token is not None
    return client, token.group(1)


def post(client: TestClient, token: str, path: str, body: object = None):
    return client.post(path, json=body if body is not None else {}, headers={"X-CSRF-Token": token})


def batch(client: TestClient) -> list[dict]:
    return client.get("/api/state").json()["batch"]


def pool_file(project: Path, image: int) -> Path:
    conn = db.connect(project, readonly=True)
    try:
        found = db.image(conn, image)
        assert found is not None
        return found.full_path
    finally:
        conn.close()


# ---- 1. the page serves only the registered bytes


def test_a_registered_image_replaced_by_a_link_or_other_bytes_is_not_served(page, project, tmp_path) -> None:
    client, _ = page
    first, second, third = (item["id"] for item in batch(client)[:3])
    path = pool_file(project, first)
    assert client.get(f"/image/{first}").content == path.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:not for the web\n")
    path.unlink()
    path.symlink_to(secret)
    refused = client.get(f"/image/{first}")
    assert refused.status_code in (404, 409) and b"not for the web" not in refused.content

    other = pool_file(project, second)  # other bytes of the same size
    data = bytearray(other.read_bytes())
    data[-5] ^= 0xFF
    other.write_bytes(bytes(data))
    assert client.get(f"/image/{second}").status_code == 409

    inside = pool_file(project, third)  # a link to a copy of itself outside the images folder
    outside = tmp_path / "copy.png"
    shutil.copy(inside, outside)
    inside.unlink()
    inside.symlink_to(outside)
    assert client.get(f"/image/{third}").status_code == 409


# ---- 2. the page changes only its own labels


def test_a_web_answer_never_overwrites_a_label_from_the_cli(page, project, tmp_path) -> None:
    client, token = page
    image = batch(client)[0]["id"]
    (tmp_path / "cli.csv").write_text(f"id,label\n{image},blue\n")
    workflow.import_labels(project, [tmp_path / "cli.csv"])
    answer = post(client, token, "/api/label", {"image": image, "label": "red"})
    assert answer.status_code == 409 and "already labeled 'blue' (csv)" in answer.json()["error"]
    assert labels_of(project)[image] == ("blue", "csv")


def test_undo_takes_back_only_the_pages_own_answer_while_it_stands(page, project, tmp_path) -> None:
    client, token = page
    image, other = (item["id"] for item in batch(client)[:2])
    assert post(client, token, "/api/label", {"image": image, "label": "red"}).status_code == 200
    (tmp_path / "fix.csv").write_text(f"id,label\n{image},green\n")
    workflow.import_labels(project, [tmp_path / "fix.csv"], relabel=True)
    refused = post(client, token, "/api/undo")
    assert refused.status_code == 409 and "changed since the page labeled it" in refused.json()["error"]
    assert labels_of(project)[image] == ("green", "csv")  # the CLI's correction stays

    assert post(client, token, "/api/label", {"image": other, "label": "blue"}).status_code == 200
    assert post(client, token, "/api/undo").status_code == 200
    assert other not in labels_of(project)


# ---- 3. add checks overlaps as init does


def test_add_refuses_the_test_images_and_never_registers_an_image_twice(project, tmp_path, capsys) -> None:
    before = workflow.status(project)["images"]
    assert run("add", str(project), "--images", str(tmp_path)) == 2  # holds the test folder
    assert "overlaps the test images" in one_error(capsys)
    assert run("add", str(project), "--images", str(tmp_path / "test" / "red")) == 2
    one_error(capsys)
    make_images(tmp_path / "pool" / "sub" / "new", 3, seed=5)
    counts = workflow.add(project, tmp_path / "pool" / "sub")  # a folder inside the pool folder
    assert counts["added"] == 3 and workflow.status(project)["images"] == before + 3
    conn = db.connect(project, readonly=True)
    paths = [row.path for row in db.pool_images(conn)]
    conn.close()
    assert len(paths) == len(set(paths)) and "sub/new/000.png" in paths


def test_add_of_a_folder_holding_the_pool_folder_skips_the_registered_images(tmp_path) -> None:
    make_images(tmp_path / "photos" / "first", 9)
    make_images(tmp_path / "photos" / "second", 6, seed=3)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "photos" / "first", CLASSES, settings=SETTINGS)
    assert workflow.add(project, tmp_path / "photos")["added"] == 6
    assert workflow.status(project)["images"] == 15


# ---- 4. CSV formula injection


def test_cells_a_spreadsheet_would_run_are_written_as_text_and_read_back(tmp_path) -> None:
    pool = tmp_path / "pool"
    files = sorted(make_images(pool, 6))
    for relative, name in zip(files, ["=HYPERLINK(1).png", "+1.png", "-2.png", "@sum.png"], strict=False):
        (pool / relative).rename(pool / name)
    project = tmp_path / "project"
    workflow.init(project, pool, ["=red", "green", "blue"], settings=SETTINGS)
    folder = query(project, "random", k=6).folder
    rows = list(csv.DictReader((folder / "batch.csv").open(newline="")))
    assert all(not row["path"].startswith(("=", "+", "-", "@")) for row in rows)
    assert {row["path"] for row in rows} >= {"'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@sum.png"}
    for row in rows:
        row["label"] = "'=red"  # as a spreadsheet keeps the typed apostrophe
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert workflow.import_labels(project, [filled]).labeled == 6
    exported = tmp_path / "labels.csv"
    workflow.export_csv(project, exported)
    cells = [row["label"] for row in csv.DictReader(exported.open(newline=""))]
    assert cells == ["'=red"] * 6  # the class =red, written as text
    text = exported.read_text()
    assert ",=red," not in text and all(not line.startswith(("=", "+", "-", "@")) for line in text.splitlines())


# ---- 5. changed images, both ways


def test_other_bytes_with_the_old_size_and_mtime_are_never_trained_on(project, capsys) -> None:
    path = pool_file(project, 1)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as registered
    assert run("query", str(project), "--strategy", "random", "--k", "3") == 2
    message = one_error(capsys)
    assert "changed since it was registered" in message and "--accept-changed" in message
    counts = workflow.add(project, Path(path.parents[0] if path.parent.name != "sub" else path.parents[1]), True)
    assert counts["accepted with new content"] == 1
    assert run("query", str(project), "--strategy", "random", "--k", "3") == 0


def test_the_same_bytes_with_a_new_mtime_are_accepted_and_hashed_once(project, monkeypatch) -> None:
    for image in (1, 2, 3):
        os.utime(pool_file(project, image), ns=(10**18, 10**18))  # a restore from backup
    query(project, "random", k=3)
    conn = db.connect(project, readonly=True)
    mtimes = {row.id: row.mtime_ns for row in db.images(conn) if row.id <= 3}
    conn.close()
    assert set(mtimes.values()) == {10**18}  # the new stat is remembered
    hashed: list[Path] = []
    from lplgrad.project import images

    real = images.fingerprint
    monkeypatch.setattr(images, "fingerprint", lambda p: hashed.append(p) or real(p))
    query(project, "random", k=3)
    assert hashed == []


# ---- 6. Label Studio ids and Choices


@pytest.mark.parametrize("value", ["11.7", "true", "Infinity", '"1e3"', "-1", "0"])
def test_label_studio_ids_must_be_integers(value: str) -> None:
    text = f'[{{"lplgrad_id": {value}, "choice": "red"}}]'
    with pytest.raises(UserError, match="is not a positive integer"):
        parse_file("min.json", text.encode())


def test_the_projects_choices_is_read_when_a_task_has_two() -> None:
    task = {
        "data": {"lplgrad_id": 3},
        "annotations": [
            {
                "result": [
                    {"from_name": "quality", "type": "choices", "value": {"choices": ["blurry"]}},
                    {"from_name": "choice", "type": "choices", "value": {"choices": ["red"]}},
                ]
            }
        ],
    }
    assert parse_file("export.json", json.dumps([task]).encode()).records[0].label == "red"
    task["annotations"][0]["result"][1]["from_name"] = "other"  # type: ignore[index]
    with pytest.raises(UserError, match="several Choices"):
        parse_file("export.json", json.dumps([task]).encode())


# ---- 7. file names that break CSV


def test_names_with_a_carriage_return_or_a_leading_space_round_trip(tmp_path) -> None:
    pool = tmp_path / "pool"
    make_images(pool, 6)
    (pool / "000.png").rename(pool / "a\rb.png")
    (pool / "sub" / "001.png").rename(pool / "sub" / " lead.png")
    project = tmp_path / "project"
    workflow.init(project, pool, CLASSES, settings=SETTINGS)
    folder = query(project, "random", k=6).folder
    rows = list(csv.DictReader((folder / "batch.csv").open(newline="")))
    assert {"a\rb.png", "sub/ lead.png"} <= {row["path"] for row in rows}
    for row in rows:  # the person fills lplgrad's own batch.csv, every other column as written
        row["label"] = "red"
    with (folder / "filled.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    assert workflow.import_labels(project, [folder / "filled.csv"]).labeled == 6


# ---- 8. tracebacks that are now one-line errors


def test_json_nested_deep_is_a_one_line_error(project, page, tmp_path, capsys) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert run("import", str(project), str(deep)) == 2
    assert "nested too deep" in one_error(capsys)
    client, token = page
    response = client.post(
        "/api/label",
        content=b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 413)


@pytest.fixture
def read_only(project: Path) -> Iterator[Path]:
    """The project on a read-only mount (root ignores file modes), or with modes (anyone else)."""
    if os.geteuid() != 0:
        for path in [project, *project.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        yield project
        for path in [project, *project.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        return
    view = project.with_name("read-only-view")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(project), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {mounted.stderr.decode().strip()}")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_project_reads_and_refuses_changes_in_one_line(read_only, tmp_path, capsys) -> None:
    assert run("status", str(read_only)) == 0
    assert "images" in capsys.readouterr().out
    assert run("export", str(read_only), "--out", str(tmp_path / "labels.csv")) == 0
    capsys.readouterr()
    (tmp_path / "l.csv").write_text("id,label\n1,red\n")
    assert run("import", str(read_only), str(tmp_path / "l.csv")) == 2
    assert "cannot be changed here" in one_error(capsys)
    assert run("query", str(read_only), "--k", "2") == 2
    one_error(capsys)


def test_a_full_disk_during_import_is_a_one_line_error_that_changes_nothing(project, tmp_path, monkeypatch, capsys):
    before = labels_of(project)
    rows = "".join(f"{i},red,{'annotator' * 1000}\n" for i in range(1, 31))  # 270 KB: more pages than there are
    (tmp_path / "l.csv").write_text("id,label,annotator\n" + rows)
    real_open = db._open

    def full(path: Path, readonly: bool) -> sqlite3.Connection:
        conn = real_open(path, readonly)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
        return conn

    monkeypatch.setattr(db, "_open", full)
    assert run("import", str(project), str(tmp_path / "l.csv")) == 2
    assert "disk is full" in one_error(capsys)
    monkeypatch.undo()
    assert labels_of(project) == before

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lplgrad.runtime.folder_lock.open", no_space, raising=False)
    assert run("import", str(project), str(tmp_path / "l.csv")) == 2
    assert "the disk is full" in one_error(capsys)


def test_a_damaged_database_is_named_by_status_and_every_command(project, tmp_path, capsys) -> None:
    path = project / db.DB_FILE
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    for page in range(1, pages):
        data[page * page_size + 8 : page * page_size + 200] = os.urandom(192)
    path.write_bytes(bytes(data))
    assert run("status", str(project)) == 2
    assert "damaged" in one_error(capsys)
    for command in (["export", str(project), "--out", str(tmp_path / "x.csv")], ["query", str(project), "--k", "2"]):
        assert run(*command) == 2
        one_error(capsys)


def test_status_into_a_closed_pipe_is_quiet(project) -> None:
    conn = sqlite3.connect(project / db.DB_FILE)  # 5,000 rounds: far more output than a pipe's buffer
    conn.executemany(
        "INSERT INTO rounds (round, strategy, labeled, queried, started, finished) VALUES (?, 'random', 0, 0, '', '')",
        [(n,) for n in range(2, 5002)],
    )
    conn.commit()
    conn.close()
    for _ in range(2):
        shell = f"{sys.executable} -m lplgrad status {project} | head -c 5"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert done.stderr == "" and len(done.stdout) == 5


# ---- 9. --host 0.0.0.0 is usable from another machine


def test_a_wildcard_address_allows_this_machines_names_and_the_named_hosts(project) -> None:
    import socket

    hosts = allowed_hosts("0.0.0.0", ["labeling.example"])
    assert socket.gethostname() in hosts and "labeling.example" in hosts and "127.0.0.1" in hosts
    client = TestClient(create_app(project, allowed_hosts=hosts), base_url=f"http://{socket.gethostname()}")
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Host": "labeling.example:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400
    assert "10.1.2.3" in allowed_hosts("10.1.2.3", []) and "attacker.example" not in hosts


# ---- 10. smaller ones


def test_an_empty_database_file_is_no_project(tmp_path, capsys) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / db.DB_FILE).touch()
    assert run("status", str(project)) == 2
    assert "is empty (0 bytes)" in one_error(capsys)
    make_images(tmp_path / "pool", 6)
    assert run("init", str(project), "--images", str(tmp_path / "pool"), "--classes", "red,green") == 2
    one_error(capsys)
    assert (project / db.DB_FILE).stat().st_size == 0


def test_an_interrupted_copy_export_can_be_run_again(project, tmp_path, monkeypatch) -> None:
    out = tmp_path / "export"
    calls = {"n": 0}
    real_copy = shutil.copy2

    def fail_second(source, target):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_copy(source, target)

    monkeypatch.setattr(shutil, "copy2", fail_second)
    with pytest.raises(KeyboardInterrupt):
        workflow.export_imagefolder(project, out, copy=True)
    monkeypatch.undo()
    assert not out.exists()
    assert workflow.export_imagefolder(project, out, copy=True) == 6  # the test images
    assert not (tmp_path / "export.partial").exists()


def test_error_lines_are_cut_and_class_names_are_unicode_normalised(tmp_path, capsys) -> None:
    make_images(tmp_path / "pool", 6)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", ["café", "thé"], settings=SETTINGS)
    (tmp_path / "l.csv").write_text(f"path,label\n000.png,{unicodedata.normalize('NFD', 'café')}\n")
    assert workflow.import_labels(project, [tmp_path / "l.csv"]).labeled == 1
    (tmp_path / "long.csv").write_text("path,label\n001.png," + "x" * 10_000_000 + "\n")
    assert run("import", str(project), str(tmp_path / "long.csv")) == 2
    assert len(one_error(capsys)) < 1200


def test_copies_and_pool_images_identical_to_test_images_are_named(tmp_path, caplog) -> None:
    make_images(tmp_path / "pool", 6)
    make_images(tmp_path / "test", 3, seed=1, folders=True)
    shutil.copy(tmp_path / "test" / "red" / "000.png", tmp_path / "pool" / "leak.png")
    os.link(tmp_path / "pool" / "002.png", tmp_path / "pool" / "hardlink.png")
    (tmp_path / "pool" / "symlink.png").symlink_to(tmp_path / "pool" / "004.png")
    project = tmp_path / "project"
    with caplog.at_level("WARNING"):
        workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=SETTINGS)
    assert "3 group(s)" in caplog.text and "identical to a test image" in caplog.text
    listed = (project / "duplicates.txt").read_text()
    assert all(name in listed for name in ("leak.png", "hardlink.png", "symlink.png", "test:"))


# ---- what a newcomer hit


def test_the_page_shows_the_newest_batch_first_and_skips_last_until_the_next_round(page, project) -> None:
    client, token = page
    first = batch(client)
    assert post(client, token, "/api/label", {"image": first[0]["id"], "label": "red"}).status_code == 200
    query(project, "random", k=3)
    shown = batch(client)
    assert [item["round"] for item in shown] == [2, 2, 2, 1, 1, 1, 1]  # the new picks, then the leftovers
    skipped = shown[0]["id"]
    assert post(client, token, "/api/skip", {"image": skipped}).status_code == 200
    reloaded = batch(TestClient(create_app(project), base_url="http://127.0.0.1"))  # a reload, a new page
    assert reloaded[-1]["id"] == skipped and reloaded[-1]["skipped"]
    query(project, "random", k=3)
    assert not any(item["skipped"] for item in batch(client))  # a new round: skips are forgotten


def test_query_says_what_it_does_and_status_shows_accuracy_per_class(project, caplog, capsys) -> None:
    conn = db.connect(project, readonly=True)
    ids = [row.id for row in db.pool_images(conn)]
    conn.close()
    (project.parent / "l.csv").write_text("id,label\n" + "".join(f"{i},{CLASSES[i % 3]}\n" for i in ids[:9]))
    workflow.import_labels(project, [project.parent / "l.csv"])
    with caplog.at_level("INFO"):
        assert main(["query", str(project), "--strategy", "random", "--k", "3"]) == 0
    assert "training on 9 labeled images" in caplog.text and "scoring" in caplog.text
    capsys.readouterr()
    assert run("status", str(project)) == 0
    assert "accuracy per class (latest round): red" in capsys.readouterr().out


def test_a_projects_config_holds_only_the_keys_a_project_uses(project, tmp_path, capsys) -> None:
    text = (project / "config.toml").read_text()
    for key in ("initial_size", "query_size", "rounds", "root", "trials", "budget"):
        assert not re.search(rf"^{key} =", text, re.M), key
    make_images(tmp_path / "more", 6)
    assert (
        run(
            "init",
            str(tmp_path / "p2"),
            "--images",
            str(tmp_path / "more"),
            "--classes",
            "a,b",
            "--set",
            "active.rounds=3",
        )
        == 2
    )
    assert "not a setting of a labeling project" in one_error(capsys)


def test_label_and_query_share_one_batch_size_and_the_page_has_an_icon(page) -> None:
    from lplgrad.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["query", "x"]).k == parser.parse_args(["label", "x"]).k
    client, _ = page
    assert client.get("/static/favicon.svg").status_code == 200
    assert 'rel="icon"' in client.get("/").text


def test_a_diverging_query_is_a_one_line_error_that_records_nothing(project, tmp_path, capsys) -> None:
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{i},{CLASSES[i % 3]}\n" for i in range(1, 10)))
    workflow.import_labels(project, [tmp_path / "l.csv"])
    rounds = workflow.status(project)["rounds"]
    text = (project / "config.toml").read_text().replace("lr = 0.05", "lr = 1e30")
    (project / "config.toml").write_text(text)
    assert run("query", str(project), "--strategy", "entropy", "--k", "3") == 2
    assert "was not recorded" in one_error(capsys) and workflow.status(project)["rounds"] == rounds
