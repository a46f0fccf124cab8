"""Hostile but realistic faults: each one must end in a one-line error or a correct result, never
in mixed, lost or silently wrong results, and never in a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lplgrad.cli.main import main
from lplgrad.config import schema as cfg
from lplgrad.data.imagefolder import decode_folder, scan
from lplgrad.errors import UserError
from lplgrad.experiment.checkpoint import REJECTED_FILE, DamagedCheckpoint, checkpoint_path, load_checkpoint
from lplgrad.experiment.results import RESULTS_FILE, append_row, read_results, read_rows
from lplgrad.experiment.run_folder import hold_run_folder
from lplgrad.experiment.runner import run_experiment
from lplgrad.report.write import load
from lplgrad.runtime.atomic_io import StorageError, write_atomic_with
from lplgrad.train.fit import TrainingDiverged, fit
from tests.helpers import make_dataset


def small(**extra: Any) -> cfg.RunConfig:
    values = {
        "active.strategies": ["random", "entropy"],
        "active.initial_size": 8,
        "active.query_size": 6,
        "active.rounds": 3,
        "active.candidate_subset": 30,
        "train.epochs": 1,
        "train.batch_size": 8,
        "model.width": 4,
        "device": "cpu",
    }
    return cfg.resolve({**values, **extra})


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stripped = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    return sorted(stripped, key=lambda r: (r["strategy"], r["trial"], r["round"]))


# 1. Two runs into one folder at once


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with (
        hold_run_folder(tmp_path / "run"),
        pytest.raises(UserError, match=rf"run folder .* is busy: pid {os.getpid()} "),
    ):
        run_experiment(small(), tmp_path / "run", dataset=make_dataset())
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
    run_experiment(small(), tmp_path / "run", dataset=make_dataset())  # free again once the holder ends


def test_a_refused_run_leaves_no_empty_folder_behind(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="initial set"):
        run_experiment(small(**{"active.initial_size": 1000}), tmp_path / "new", dataset=make_dataset())
    assert not (tmp_path / "new").exists()


# 2. --resume rebuilds every row


@pytest.mark.determinism
def test_resume_rebuilds_a_deleted_or_cut_results_file_from_the_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    want = comparable(run_experiment(small(), out, dataset=make_dataset()))
    results = out / RESULTS_FILE
    data = results.read_bytes()
    results.unlink()
    run_experiment(small(), out, dataset=make_dataset(), resume=True)
    assert comparable(read_rows(results)) == want
    results.write_bytes(data[: len(data) // 2])  # cut in the middle of a line
    run_experiment(small(), out, dataset=make_dataset(), resume=True)
    assert comparable(read_rows(results)) == want


def test_a_checkpoint_from_before_checksums_still_resumes_and_names_rows_it_cannot_rebuild(
    tmp_path: Path, caplog
) -> None:
    out = tmp_path / "run"
    config = small(**{"active.strategies": ["random"]})
    want = comparable(run_experiment(config, out, dataset=make_dataset()))
    path = checkpoint_path(out, "random", 0)
    state = load_checkpoint(out, "random", 0)
    assert state is not None
    old = {"round": state["round"], "labeled_at": state["labeled_at"], "row": state["rows"][-1]}
    torch.save(old, path)  # the format written before checksums: torch.save alone, one row
    (out / RESULTS_FILE).unlink()
    run_experiment(config, out, dataset=make_dataset(), resume=True)
    assert comparable(read_rows(out / RESULTS_FILE)) == want[-1:]
    assert "rows of rounds [0, 1] are lost" in caplog.text


# 3. Damaged checkpoints


@pytest.mark.determinism
@pytest.mark.parametrize("damage", ["flip", "garbage"])
def test_a_damaged_checkpoint_is_a_one_line_error_and_deleting_it_reruns_the_pair(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "run"
    config = small(**{"active.rounds": 4})
    full = comparable(run_experiment(config, tmp_path / "whole", dataset=make_dataset()))
    run_experiment(config, out, dataset=make_dataset())
    path = checkpoint_path(out, "entropy", 0)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match=f"checkpoint {path} is damaged .*delete it and rerun with --resume"):
        run_experiment(config, out, dataset=make_dataset(), resume=True)
    path.unlink()
    run_experiment(config, out, dataset=make_dataset(), resume=True)
    rows = read_rows(out / RESULTS_FILE)
    assert len(rows) == len(full)  # the pair's old rows were replaced, not duplicated
    assert comparable(rows) == full


# 4. Non-finite or exploding training


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.lr", float("nan")),
        ("train.lr", float("inf")),
        ("train.lr", 0.0),
        ("train.momentum", 1.0),
        ("train.momentum", -0.1),
        ("train.weight_decay", -1e-4),
        ("train.gamma", -0.1),
        ("train.ranking_weight", float("nan")),
        ("model.aux_hidden", 0),
    ],
)
def test_training_settings_that_cannot_train_are_refused(key: str, value: float) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        small(**{key: value})


def test_weights_that_exploded_in_the_last_step_are_not_recorded_as_a_round() -> None:
    torch.manual_seed(0)
    from lplgrad.models import ResNet18

    model = ResNet18(4, width=4)
    config = cfg.TrainConfig(epochs=1, batch_size=64, lr=1e9)  # one step: its loss was still finite
    with pytest.raises(TrainingDiverged, match="weights are not finite or exceed"):
        fit(model, make_dataset(), torch.arange(64), config, seed=0)


# 5. A full disk during a checkpoint write


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("torch failed")])
def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path, error: Exception) -> None:
    def failing(handle: Any) -> None:
        handle.write(b"partial")
        raise error

    with pytest.raises(StorageError if isinstance(error, OSError) else RuntimeError):
        write_atomic_with(tmp_path / "state.pt", failing)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_a_checkpoint_is_written_is_the_storage_error(tmp_path, monkeypatch) -> None:
    real_fsync = os.fsync
    calls = {"n": 0}

    def full_on_second_checkpoint(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_second_checkpoint)
    with pytest.raises(StorageError, match="the disk is full"):
        run_experiment(small(), tmp_path, dataset=make_dataset())
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# 6-8. Checked before any work


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"active.candidate_subset": 4, "active.query_size": 6},
            r"active.candidate_subset \(4\) must be >= active.query_size \(6\)",
        ),
        ({"active.strategies": ["random", "random"]}, "lists random more than once"),
        ({"seed": 2**32}, "seed must be in"),
        ({"seed": -1}, "seed must be in"),
        ({"seed": 2**32 - 2, "active.trials": 3}, "seed must be in"),  # seed + trial wraps too
        ({"active.initial_size": 1}, "active.initial_size must be >= 2"),
    ],
)
def test_settings_refused_before_any_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        small(**values)


def test_nan_is_written_as_null_so_the_file_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / RESULTS_FILE
    row = {"strategy": "s", "trial": 0, "round": 0, "labeled": 4, "test_accuracy": 0.5}
    append_row(path, {**row, "per_class_accuracy": [1.0, float("nan")]})

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    parsed = json.loads(path.read_text(), parse_constant=refuse)
    assert parsed["per_class_accuracy"] == [1.0, None]


# Tracebacks that became one-line errors


def run_cli(*args: str) -> int:
    return main(["-q", "run", "--dataset", "digits", "--strategy", "random", *args])


def test_bad_config_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("seed = 1 # caf\xe9\n".encode("latin-1"))
    assert run_cli("--config", str(latin1), "--out", str(tmp_path / "a")) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert run_cli("--config", str(tmp_path), "--out", str(tmp_path / "b")) == 2
    assert "is a folder" in capsys.readouterr().err


def test_bad_lines_in_results_are_named_and_the_valid_rows_used(tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    want = comparable(run_experiment(small(), out, dataset=make_dataset()))
    results = out / RESULTS_FILE
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + "\n" + "{}\n" + "garbage\n" + "".join(lines[1:]))
    assert read_results(results).bad_lines == [2, 3, 4]
    assert comparable(load([out]).rows) == want
    assert "lines 2, 3, 4 are not results rows" in caplog.text
    run_experiment(small(), out, dataset=make_dataset(), resume=True)
    assert comparable(read_rows(results)) == want and read_results(results).bad_lines == []
    assert "garbage" in (out / REJECTED_FILE).read_text()


def test_report_into_an_unwritable_place_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    run_experiment(small(), tmp_path / "run", dataset=make_dataset())
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["-q", "report", str(tmp_path / "run"), "--out", str(blocker / "report")]) == 2
    assert "cannot write the report into" in capsys.readouterr().err


def test_an_image_file_name_that_is_not_utf8_decodes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / name / f"{i}.png")
    os.rename(root / "a" / "0.png", os.fsdecode(bytes(root / "a") + b"/\xff\xfe.png"))
    found = decode_folder(root, cache_dir=tmp_path / "cache")
    assert len(found.labels) == 4


# Smaller


def test_empty_out_and_abbreviated_flags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as empty:
        run_cli("--out", "")
    with pytest.raises(SystemExit) as abbreviated:
        run_cli("--epoch", "1", "--out", str(tmp_path / "x"))
    assert empty.value.code == abbreviated.value.code == 2


def test_symlinks_and_hidden_files_in_an_image_folder(tmp_path: Path, caplog) -> None:
    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "1.png")
    (root / "cat" / "._1.png").write_bytes(b"\0\0macOS resource fork")
    (root / "...").mkdir()
    (root / "loop").symlink_to(root)  # a link back to the root would be a class of duplicates
    (root / "dog" / "again.png").symlink_to(root / "cat" / "1.png")  # one file reached twice
    paths, labels, classes = scan(root)
    assert classes == ["cat", "dog"]
    assert [p.relative_to(root).as_posix() for p in paths] == ["cat/1.png", "dog/1.png"]
    assert labels == [0, 1]
    for said in (
        "hidden entries '...'",
        "lead back to the folder itself: loop",
        "1 image file(s): hidden",
        "1 image file(s): reached twice through a symlink",
    ):
        assert said in caplog.text


def test_sigterm_stops_like_ctrl_c_with_the_resume_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "lplgrad",
        "-q",
        "run",
        "--dataset",
        "digits",
        "--strategy",
        "random",
        "--rounds",
        "30",
        "--initial",
        "20",
        "--query",
        "10",
        "--epochs",
        "1",
        "--width",
        "4",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / RESULTS_FILE).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    resume = f"lplgrad run --config {out / 'config.toml'} --out {out} --resume"
    assert f"lplgrad: terminated: every finished round is saved; continue with: {resume}" in err.decode()
