"""torchrun with 2 processes (gloo on the CPU): sharded scoring, DistributedDataParallel training,
whole runs, resume and a failing process, each checked against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lplgrad.experiment.runner import run_experiment
from lplgrad.runtime.distributed import gather, shard, world
from tests.distributed_worker import NoBatchStatistics, fitted, picks

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed with torch here")


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """2 processes on this machine, one CPU thread each."""
    assert TORCHRUN is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def worker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return torchrun(str(ROOT / "tests" / "distributed_worker.py"), *args, timeout=timeout)


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_single_process_helpers_are_no_ops() -> None:
    assert world() == (0, 1)
    assert shard(31) == slice(0, 31)
    part = torch.arange(5)
    assert gather(part) is part


@needs_torchrun
def test_two_processes_score_disjoint_shards_and_pick_the_same_images(tmp_path: Path) -> None:
    done = worker("picks", str(tmp_path / "picks.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(tmp_path / "picks.pt", weights_only=True)
    assert sharded["world"] == 2
    for name, (indices, scores) in picks().items():
        assert sharded["picks"][name][0] == indices, name
        if scores is not None:
            assert sharded["picks"][name][1] == pytest.approx(scores, rel=1e-5), name


@needs_torchrun
def test_distributed_fit_averages_gradients_like_one_process_and_ranks_agree(tmp_path: Path) -> None:
    done = worker("fit", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    for model in ("plain", "resnet", "aux"):  # every weight and BatchNorm buffer identical on both ranks
        for key, value in ranks[0][model].items():
            assert torch.equal(value, ranks[1][model][key]), (model, key)
    # Without batch statistics, 2 x half batches (shards of 8/8, then 6/7) are one process on whole batches:
    # a wrong weighting of the uneven shards, or gradients not averaged, would move these weights.
    single = fitted()
    for key, value in single["plain"].items():
        assert torch.allclose(ranks[0]["plain"][key], value, atol=1e-5, rtol=1e-4), key
    torch.manual_seed(0)
    untrained = NoBatchStatistics().state_dict()
    assert not torch.allclose(untrained["fc.weight"], single["plain"]["fc.weight"], atol=1e-2)  # it did train


@needs_torchrun
def test_two_processes_compute_the_cached_trunk_features_in_halves_and_one_writes_them(tmp_path: Path) -> None:
    from lplgrad.train.features import cached_features_dataset
    from tests.helpers import make_dataset

    done = worker("features", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["counted"] == [4, 2] and ranks[1]["counted"] == [5, 3]  # shards of 9 and of 5 images
    assert len(list((tmp_path / "cache").iterdir())) == 1  # written once
    single = cached_features_dataset(
        make_dataset(num_train=9, num_test=5), "efficientnet-lite0", "default", tmp_path / "one", "last"
    )
    for rank in ranks:
        assert torch.equal(rank["train"], ranks[0]["train"]) and torch.equal(rank["test"], ranks[0]["test"])
        torch.testing.assert_close(rank["train"].float(), single.train.images.float(), rtol=0, atol=2e-2)
        torch.testing.assert_close(rank["test"].float(), single.test.images.float(), rtol=0, atol=2e-2)


RUN = ["--dataset", "digits", "--initial", "40", "--query", "20", "--epochs", "1", "--width", "4", "--device", "cpu"]


@needs_torchrun
def test_a_torchrun_run_writes_the_rows_of_one_process_once(tmp_path: Path) -> None:
    args = [*RUN, "--strategy", "random,lplgrad,coreset", "--rounds", "3"]
    done = torchrun("-m", "lplgrad", "run", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results:") == 1  # rank 0 alone prints and writes
    two = rows_of(tmp_path / "two")
    one = _single(args, tmp_path / "one")
    key = [(r["strategy"], r["trial"], r["round"], r["labeled"]) for r in two]
    assert key == [(r["strategy"], r["trial"], r["round"], r["labeled"]) for r in one]
    assert len(set(key)) == len(key) == 9
    assert {r["world_size"] for r in two} == {2} and {r["world_size"] for r in one} == {1}
    # Random picks do not depend on the model: the same images as one process.
    assert [r["selected"] for r in two if r["strategy"] == "random"] == [
        r["selected"] for r in one if r["strategy"] == "random"
    ]
    assert not list((tmp_path / "two").glob("*rank*"))


def _single(args: list[str], out: Path) -> list[dict]:
    from lplgrad.cli.main import main

    assert main(["run", *args, "--out", str(out)]) == 0
    return rows_of(out)


@needs_torchrun
def test_torchrun_resumes_a_run_that_one_process_started(tmp_path: Path, monkeypatch) -> None:
    import lplgrad.core.round
    from lplgrad.cli.main import build_parser, config_from_args

    args = [*RUN, "--strategy", "entropy", "--rounds", "3"]
    config = config_from_args(build_parser().parse_args(["run", *args, "--out", str(tmp_path / "run")]))
    real_fit = lplgrad.core.round.fit

    def interrupted_in_round_2(*a, **k):  # type: ignore[no-untyped-def]
        if k.get("description", "").endswith("r2"):
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    monkeypatch.setattr("lplgrad.core.round.fit", interrupted_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "run")
    assert [r["round"] for r in rows_of(tmp_path / "run")] == [0, 1]
    done = torchrun("-m", "lplgrad", "run", *args, "--out", str(tmp_path / "run"), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path / "run")
    assert [(r["round"], r["world_size"]) for r in rows] == [(0, 1), (1, 1), (2, 2)]


@needs_torchrun
def test_a_failing_process_stops_every_process_with_its_message(tmp_path: Path) -> None:
    args = ["run", *RUN, "--strategy", "random", "--rounds", "3", "--out", str(tmp_path / "run")]
    done = worker("fail", *args, timeout=120)  # a hang would end in TimeoutExpired
    assert done.returncode != 0
    assert "lplgrad: error on rank 1: the simulated failure of rank 1" in done.stderr
    # Rank 0 was waiting in a collective: it says why it stopped in one line, unless torchrun's SIGTERM came first.
    assert "[rank0]: Traceback" not in done.stderr
    assert [r["round"] for r in rows_of(tmp_path / "run")] == [0]  # what finished is kept


@needs_torchrun
def test_a_labeling_query_under_torchrun_writes_one_batch_like_one_process(tmp_path: Path) -> None:
    from lplgrad.cli.main import main
    from lplgrad.project import db
    from tests.helpers import TINY, make_images

    truth = make_images(tmp_path / "pool", 30)
    labels = "path,label\n" + "".join(f"{path},{label}\n" for path, label in list(truth.items())[:12])
    (tmp_path / "labels.csv").write_text(labels)
    projects = {}
    for name in ("one", "two"):
        projects[name] = tmp_path / name
        init = ["init", str(projects[name]), "--images", str(tmp_path / "pool"), "--classes", "red,green,blue"]
        assert main([*init, "--labels", str(tmp_path / "labels.csv"), *TINY]) == 0
    assert main(["query", str(projects["one"]), "--k", "5", "--strategy", "random"]) == 0
    done = torchrun("-m", "lplgrad", "query", str(projects["two"]), "--k", "5", "--strategy", "random")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("round 1: 5 images to label") == 1  # rank 0 alone prints and writes

    def batch(project: Path) -> list[str]:  # the images asked for (suggestions and confidences come from the model)
        return [line.split(",")[1] for line in (project / "batches" / "round-1" / "batch.csv").read_text().splitlines()]

    assert batch(projects["two"]) == batch(projects["one"])  # random picks do not depend on the model
    for project in projects.values():
        conn = db.connect(project)
        assert len(db.rounds(conn)) == 1
        conn.close()


@needs_torchrun
def test_a_head_round_under_torchrun_computes_the_missing_features_in_shards_like_one_process(tmp_path: Path) -> None:
    """Rank 0 hands each chunk of images without features to both processes (``feature_shards``):
    the stored features and the batch are those of one process."""
    from lplgrad.cli.main import main
    from lplgrad.project import db
    from tests.helpers import make_images

    truth = make_images(tmp_path / "pool", 21)
    labels = "path,label\n" + "".join(f"{path},{label}\n" for path, label in list(truth.items())[:9])
    (tmp_path / "labels.csv").write_text(labels)
    head = ["--set", "model.backbone=efficientnet-lite0", "--set", "train.finetune=head", "--set", "device=cpu"]
    head += ["--set", "train.min_steps=20", "--set", "active.duplicate_threshold=1.0"]
    projects = {name: tmp_path / name for name in ("one", "two")}
    for project in projects.values():
        init = ["init", str(project), "--images", str(tmp_path / "pool"), "--classes", "red,green,blue"]
        assert main([*init, "--labels", str(tmp_path / "labels.csv"), *head]) == 0
    assert main(["query", str(projects["one"]), "--k", "4", "--strategy", "random"]) == 0
    done = torchrun("-m", "lplgrad", "query", str(projects["two"]), "--k", "4", "--strategy", "random")
    assert done.returncode == 0, done.stderr[-3000:]

    def stored(project: Path) -> dict[str, torch.Tensor]:
        conn = db.connect(project, readonly=True)
        vectors = {
            sha: torch.frombuffer(bytearray(v), dtype=torch.float16)
            for page in db.feature_pages(conn, db.feature_backbones(conn)[0])
            for sha, v in page
        }
        conn.close()
        return vectors

    one, two = stored(projects["one"]), stored(projects["two"])
    assert len(one) == 21 and one.keys() == two.keys()
    for sha, vector in one.items():
        torch.testing.assert_close(two[sha].float(), vector.float(), rtol=0, atol=2e-2)
    batch = "batches/round-1/batch.csv"
    assert [line.split(",")[1] for line in (projects["two"] / batch).read_text().splitlines()] == [
        line.split(",")[1] for line in (projects["one"] / batch).read_text().splitlines()
    ]
