"""Sharded scoring under torchrun (2 processes, gloo on the CPU) picks what one process picks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lplgrad.distributed import gather, shard, world
from tests.distributed_scoring import picks

ROOT = Path(__file__).resolve().parents[1]


def test_single_process_helpers_are_no_ops() -> None:
    assert world() == (0, 1)
    assert shard(31) == slice(0, 31)
    part = torch.arange(5)
    assert gather(part) is part


def test_two_processes_score_disjoint_shards_and_pick_the_same_images(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed with torch here")
    out = tmp_path / "picks.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "distributed_scoring.py"), str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(out, weights_only=True)
    assert sharded["world"] == 2
    single = picks()
    for name, (indices, scores) in single.items():
        assert sharded["picks"][name][0] == indices, name
        assert sharded["picks"][name][1] == pytest.approx(scores, rel=1e-5), name
