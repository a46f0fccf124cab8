import json
import math
from pathlib import Path

import pytest
import torch

from lplgrad.cli.main import main
from lplgrad.config import files as config_files
from lplgrad.config import schema as cfg
from lplgrad.report.metrics import aubc, paired_difference
from lplgrad.report.write import write_report


def test_aubc_by_hand() -> None:
    # Trapezoids: (100-0)*(0.2+0.4)/2 + (300-100)*(0.4+0.6)/2 = 30 + 100 = 130; range 300.
    assert aubc([0, 100, 300], [0.2, 0.4, 0.6]) == pytest.approx(130 / 300)
    assert aubc([300, 0, 100], [0.6, 0.2, 0.4]) == pytest.approx(130 / 300)  # order does not matter
    assert aubc([50], [0.7]) == 0.7


def test_paired_difference_by_hand() -> None:
    # Differences 0.1, 0.3, 0.2: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.1 / sqrt(3).
    mean, low, high = paired_difference([0.6, 0.8, 0.7], [0.5, 0.5, 0.5])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half), rel=1e-5)
    mean, low, high = paired_difference([0.6], [0.5])
    assert mean == pytest.approx(0.1) and math.isnan(low) and math.isnan(high)


def write_run(folder: Path, trials: list[int], methods: list[str], rounds: int = 3, config_trials: int = 2) -> None:
    folder.mkdir(parents=True)
    config = cfg.resolve(
        {
            "active.strategies": methods,
            "active.trials": config_trials,
            "active.initial_size": 100,
            "active.query_size": 100,
            "active.rounds": rounds,
        }
    )
    (folder / "config.toml").write_text(config_files.to_toml(config))
    (folder / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog", "frog"]}))
    lines = []
    for trial in trials:
        for m, method in enumerate(methods):
            for r in range(rounds):
                acc = 0.3 + 0.1 * r + 0.02 * m + 0.01 * trial
                lines.append(
                    json.dumps(
                        {
                            "strategy": method,
                            "trial": trial,
                            "round": r,
                            "labeled": 100 * (r + 1),
                            "test_accuracy": acc,
                            "per_class_accuracy": [acc, acc, acc],
                            "train_seconds": 2.0 + m,
                            "query_seconds": 0.5 if r < rounds - 1 else 0.0,
                            "candidates": 500 if r < rounds - 1 else 0,
                            "selected_labels": [0, 1, 1] if r < rounds - 1 else [],
                            "device": "cpu",
                        }
                    )
                )
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_full_report(tmp_path: Path) -> None:
    methods = ["random", "entropy", "lplgrad", "ent-gradnorm"]
    write_run(tmp_path / "run", [0, 1], methods)
    report = write_report([tmp_path / "run"]).read_text()
    assert "All rounds present." in report
    # lplgrad (index 2) beats random by 0.04 in every round and trial: AUBC +4.00 points, zero-width CI.
    assert "| lplgrad | 2 | +4.00 | [+4.00, +4.00] | +4.00 | [+4.00, +4.00] |" in report
    # Best per column in bold: ent-gradnorm (index 3) has the highest accuracy: 36.5 at 100 labeled.
    assert "| ent-gradnorm | **36.50 ± 0.71** | **46.50 ± 0.71** | **56.50 ± 0.71** |" in report
    assert "| random | 2.0 | 0.50 | 1.00 |" in report  # train s/round, query s/round, ms per candidate
    assert "| lplgrad |" in report and "| ent-gradnorm (ablation of lplgrad) |" in report
    for name in ("learning_curves.png", "per_class_accuracy.png", "queried_classes.png"):
        assert (tmp_path / "run" / name).stat().st_size > 5000


def test_partial_single_trial_report_says_what_is_missing(tmp_path: Path) -> None:
    write_run(tmp_path / "run", [0], ["random", "lplgrad"], rounds=3, config_trials=2)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    (tmp_path / "run" / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n")  # lplgrad stopped at round 0
    report = write_report([tmp_path / "run"]).read_text()
    assert "- lplgrad trial 0: rounds 1-2 of 0-2 missing" in report
    assert "- random trial 1: not started" in report
    assert "n/a" in report or "| lplgrad | 0 |" in report


def test_slices_merge_and_cli(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "a", [0], ["random", "lplgrad"])
    write_run(tmp_path / "b", [1], ["random", "lplgrad"])
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Trials present: 0, 1." in report and "All rounds present." in report
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_saved_artifacts_make_tsne_and_confidence_figures(tmp_path: Path) -> None:
    from lplgrad.experiment.artifacts import load_all
    from lplgrad.experiment.runner import run_experiment
    from tests.helpers import make_dataset

    config = cfg.resolve(
        {
            "active.strategies": ["lplgrad", "random"],
            "active.trials": 1,
            "active.initial_size": 10,
            "active.query_size": 10,
            "active.rounds": 4,
            "train.epochs": 1,
            "model.width": 4,
            "device": "cpu",
            "save_artifacts": True,
        }
    )
    run_experiment(config, tmp_path, dataset=make_dataset(num_train=80, num_test=40))
    found = load_all(tmp_path)
    assert sorted(found) == [(s, 0, r) for s in ("lplgrad", "random") for r in (0, 2, 3)]
    item = found[("random", 0, 2)]
    assert item["test_features"].shape == (40, 32) and item["test_features"].dtype == torch.float16
    assert len(item["confidence_labeled"]) == 30 and len(item["confidence_unlabeled"]) == 50
    assert torch.equal(found[("lplgrad", 0, 3)]["test_index"], item["test_index"]), "same test images for all"
    report = write_report([tmp_path]).read_text()
    assert "tsne.png" in report and "confidence.png" in report
    assert (tmp_path / "tsne.png").stat().st_size > 5000 and (tmp_path / "confidence.png").stat().st_size > 5000


def test_every_registered_strategy_has_its_own_color() -> None:
    from lplgrad.report.plots import method_color
    from lplgrad.strategies import list_strategies

    colors = [method_color(name) for name in list_strategies()]
    assert len(set(colors)) == len(colors)
