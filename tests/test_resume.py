"""Crash safety: kills, interrupts, diverging training and failing writes lose nothing and resume exactly."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lplgrad.cli.main import main
from lplgrad.config import schema as cfg
from lplgrad.errors import UserError
from lplgrad.experiment.checkpoint import load_checkpoint
from lplgrad.experiment.results import read_rows
from lplgrad.experiment.runner import TrialsFailed, run_experiment
from lplgrad.runtime.atomic_io import StorageError
from lplgrad.train import fit as train

RUN = [
    "--dataset",
    "digits",
    "--strategy",
    "lplgrad,random",
    "--trials",
    "2",
    "--initial",
    "30",
    "--query",
    "30",
    "--rounds",
    "4",
    "--epochs",
    "3",
    "--width",
    "4",
    "--subset",
    "300",
]

# Also run by README's test command under AVX2 kernels (pytest -m determinism), see pyproject.toml.
pytestmark = pytest.mark.determinism


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the wall-clock fields, in a fixed order."""
    stripped = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    return sorted(stripped, key=lambda r: (r["strategy"], r["trial"], r["round"]))


def reference_rows(tmp_path: Path) -> list[dict[str, Any]]:
    assert main(["-q", "run", *RUN, "--out", str(tmp_path / "reference")]) == 0
    return comparable(read_rows(tmp_path / "reference" / "results.jsonl"))


def rows_written(path: Path) -> int:
    return len(read_rows(path)) if path.exists() else 0


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lplgrad", "-q", "run", *RUN]
    subprocess.run([*command, "--out", str(tmp_path / "reference")], check=True, capture_output=True)
    want = comparable(read_rows(tmp_path / "reference" / "results.jsonl"))

    out = tmp_path / "killed"
    results = out / "results.jsonl"
    chance = random.Random(0)
    # Kill after a random number of finished rounds plus a random fraction of a second, so the
    # kills land inside training, scoring and checkpoint writes, and always mid-run.
    targets = sorted(chance.sample(range(1, len(want) - 3), 3))
    for attempt, target in enumerate(targets):
        process = subprocess.Popen(
            [*command, "--out", str(out), *(["--resume"] if attempt else [])], stderr=subprocess.PIPE
        )
        while rows_written(results) < target and process.poll() is None:
            time.sleep(0.05)
        time.sleep(chance.uniform(0.0, 0.6))
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        assert process.returncode == -signal.SIGKILL, err.decode()
        assert 0 < rows_written(results) <= len(want)
    subprocess.run([*command, "--out", str(out), "--resume"], check=True, capture_output=True)
    rows = read_rows(results)
    assert len(rows) == len({(r["strategy"], r["trial"], r["round"]) for r in rows}), "no duplicated rows"
    assert comparable(rows) == want

    # Resuming a finished run changes nothing and still succeeds.
    subprocess.run([*command, "--out", str(out), "--resume"], check=True, capture_output=True)
    assert comparable(read_rows(results)) == want


def test_ctrl_c_saves_everything_says_how_to_resume_and_resume_matches(tmp_path, monkeypatch, capsys) -> None:
    want = reference_rows(tmp_path)
    calls = {"n": 0}
    original = train.fit

    def interrupted_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr("lplgrad.core.round.fit", interrupted_fit)
    out = tmp_path / "run"
    assert main(["-q", "run", *RUN, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"--out {out} --resume" in err
    assert len(read_rows(out / "results.jsonl")) == 5
    monkeypatch.setattr("lplgrad.core.round.fit", original)
    assert main(["-q", "run", "--config", str(out / "config.toml"), "--out", str(out), "--resume"]) == 0
    assert comparable(read_rows(out / "results.jsonl")) == want


def small(**extra: Any) -> cfg.RunConfig:
    return cfg.resolve(
        {
            "active.strategies": ["entropy", "random"],
            "active.trials": 2,
            "active.initial_size": 30,
            "active.query_size": 30,
            "active.rounds": 3,
            "train.epochs": 2,
            "model.width": 4,
            "device": "cpu",
            **extra,
        }
    )


def test_diverging_training_stops_only_its_own_trial(tmp_path, monkeypatch) -> None:
    original = train.fit

    def nan_for_entropy_trial_1_round_2(model, dataset, labeled, config, seed, **kwargs):
        if kwargs.get("description", "").startswith("entropy t1 r2"):
            raise train.TrainingDiverged(epoch=1)
        return original(model, dataset, labeled, config, seed, **kwargs)

    monkeypatch.setattr("lplgrad.core.round.fit", nan_for_entropy_trial_1_round_2)
    with pytest.raises(TrialsFailed, match=r"entropy trial 1 round 2 \(try a lower train.lr\)"):
        run_experiment(small(), tmp_path)
    done = {(r["strategy"], r["trial"], r["round"]) for r in read_rows(tmp_path / "results.jsonl")}
    assert ("entropy", 1, 1) in done and ("entropy", 1, 2) not in done
    assert {("random", 1, r) for r in range(3)} <= done, "the other runs went on"


def test_nan_loss_is_detected_with_its_epoch() -> None:
    from lplgrad.models import ResNet18
    from tests.helpers import make_dataset

    model = ResNet18(4, width=4)
    config = cfg.resolve({"train.lr": 1e30, "train.epochs": 5, "model.width": 4}).train
    with pytest.raises(train.TrainingDiverged, match="not finite at epoch"):
        train.fit(model, make_dataset(), torch.arange(32), config, seed=0)


def test_disk_full_keeps_the_previous_state(tmp_path, monkeypatch) -> None:
    config = small(**{"active.trials": 1, "active.strategies": ["random"]})
    real_replace = os.replace
    replaced = {"n": 0}

    def full_disk_on_second_checkpoint(src, dst):
        if str(dst).endswith(".pt"):
            replaced["n"] += 1
            if replaced["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_on_second_checkpoint)
    with pytest.raises(StorageError, match="the disk is full; what was written before is still whole"):
        run_experiment(config, tmp_path)
    state = load_checkpoint(tmp_path, "random", 0)
    assert state is not None and state["round"] == 0  # the first checkpoint, intact
    assert [r["round"] for r in read_rows(tmp_path / "results.jsonl")] == [0]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp")), "no temporary file left behind"
    monkeypatch.setattr(os, "replace", real_replace)
    run_experiment(config, tmp_path, resume=True)
    assert [r["round"] for r in read_rows(tmp_path / "results.jsonl")] == [0, 1, 2]


def test_resume_repairs_a_torn_line_and_a_row_lost_after_its_checkpoint(tmp_path: Path) -> None:
    config = small(**{"active.trials": 1})
    want = comparable(run_experiment(config, tmp_path / "whole"))
    run_experiment(config, tmp_path / "run")
    results = tmp_path / "run" / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    # A kill tore the last row mid-append (its checkpoint was already saved).
    results.write_text("".join(lines[:-1]) + lines[-1][:15])
    run_experiment(config, tmp_path / "run", resume=True)
    assert comparable(read_rows(results)) == want
    # A kill between saving the last checkpoint and appending its row.
    results.write_text("".join(lines[:-1]))
    run_experiment(config, tmp_path / "run", resume=True)
    assert comparable(read_rows(results)) == want


def test_resume_refuses_a_changed_configuration(tmp_path: Path) -> None:
    run_experiment(small(**{"active.trials": 1}), tmp_path)
    with pytest.raises(UserError, match=r"--resume with a changed configuration: active\.query_size, train\.lr differ"):
        run_experiment(small(**{"active.trials": 1, "active.query_size": 20, "train.lr": 0.01}), tmp_path, resume=True)


def test_last_round_checkpoint_drops_the_weights(tmp_path: Path) -> None:
    run_experiment(small(**{"active.trials": 1, "active.strategies": ["random"]}), tmp_path)
    state = load_checkpoint(tmp_path, "random", 0)
    assert state is not None and state["round"] == 2 and "model" not in state
    assert [row["labeled"] for row in state["rows"]] == [30, 60, 90]  # every row of the pair, to rebuild results
