"""Slow tests on the real CIFAR-10 image folder from ../shared (run with `pytest -m slow`)."""

import json
import tarfile
from pathlib import Path

import pytest

from lplgrad.cli.main import main
from lplgrad.strategies import list_strategies

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not found")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def test_every_strategy_runs_on_the_cifar10_folder(cifar_folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LPLGRAD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    strategies = ",".join(list_strategies())
    args = [
        "-q",
        "run",
        "--dataset",
        f"imagefolder:{cifar_folder}",
        "--strategy",
        strategies,
        "--initial",
        "200",
        "--query",
        "100",
        "--rounds",
        "2",
        "--subset",
        "400",
        "--epochs",
        "2",
        "--width",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(list_strategies())
    assert {r["labeled"] for r in rows} == {200, 300}
    assert all(len(r["per_class_accuracy"]) == 10 for r in rows)
