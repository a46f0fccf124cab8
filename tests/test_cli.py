import json
import subprocess
import sys

import pytest

from lplgrad.cli.main import main
from lplgrad.data.loaders import list_datasets
from lplgrad.strategies import list_strategies

TINY = ["--initial", "20", "--query", "15", "--rounds", "2", "--epochs", "2", "--width", "4", "--subset", "60"]


def test_lists(capsys) -> None:
    assert main(["strategies"]) == 0
    assert capsys.readouterr().out.split() == list_strategies()
    assert main(["datasets"]) == 0
    assert "imagefolder:PATH" in capsys.readouterr().out.split()
    assert "digits" in list_datasets()


@pytest.mark.determinism
def test_run_end_to_end_on_digits(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "-q",
            "run",
            "--dataset",
            "digits",
            "--strategy",
            "lplgrad,entropy",
            "--trials",
            "1",
            *TINY,
            "--set",
            "train.lr=0.02",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["labeled"]) for r in rows] == [
        ("lplgrad", 20),
        ("lplgrad", 35),
        ("entropy", 20),
        ("entropy", 35),
    ]
    config_text = (out / "config.toml").read_text()
    assert "lr = 0.02" in config_text and 'reduction = "layer_sum"' in config_text
    assert "lplgrad" in capsys.readouterr().out

    # The written config reproduces the run.
    again = tmp_path / "again"
    assert main(["-q", "run", "--config", str(out / "config.toml"), "--out", str(again)]) == 0
    rows_again = [json.loads(line) for line in (again / "results.jsonl").read_text().splitlines()]
    assert [r["selected"] for r in rows_again] == [r["selected"] for r in rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: caltech101, cifar10"),
        (["--strategy", "lplgrad,badger"], "unknown strategy 'badger'; choose one of: badge, bald, batchbald, coreset"),
        (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
        (["--set", "train.epochs=two"], "train.epochs expects int"),
        (["--budget", "5000"], "budget (5000) is larger than the training pool (1437 images)"),
        (["--query", "0"], "active.query_size must be >= 1"),
        (["--initial", "2000"], "initial set (2000) is larger than the training pool"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent"], "data root /nonexistent does not exist"),
        (["--dataset", "imagefolder:/nonexistent"], "image folder /nonexistent does not exist"),
        (["--config", "/nonexistent.toml"], "config file /nonexistent.toml does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message) -> None:
    out = tmp_path / "out"
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lplgrad: error: ")
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_console_entry_point_exit_code_and_no_traceback(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lplgrad", "run", "--strategy", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown strategy 'nope'" in result.stderr


def test_failed_download_is_one_line_exit_2(tmp_path, capsys, monkeypatch) -> None:
    from urllib.error import URLError

    from torchvision import datasets

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    out = tmp_path / "out"
    args = ["run", "--dataset", "cifar10", "--download", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lplgrad: error: cifar10: download failed (")
    assert not out.exists()


def test_unusable_run_folder_is_one_line_exit_2(tmp_path, capsys) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out, message in [(a_file, "is a file"), (a_file / "below", "is not a writable folder")]:
        assert main(["run", "--dataset", "digits", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert a_file.read_text() == "not a folder"
