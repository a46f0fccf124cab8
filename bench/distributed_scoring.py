"""Benchmark: scoring throughput with 1 and with N processes (torchrun), in the same run.

    python bench/distributed_scoring.py [--processes 2] [--candidates 4096] [--width 16] [--strategy lplgrad]

Launches ``torchrun --standalone --nproc_per_node=P`` on this script for P = 1 and P = N; each
run scores the same candidates with ``Strategy.select`` (each process its slice, scores
gathered) and rank 0 reports the wall time of the slowest process. Prints images/s for both and
their ratio. On a CPU each process gets ``cores / P`` threads, so the comparison is the same
machine split two ways; on a GPU machine each process takes one GPU (with one GPU, only P = 1
is meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from lplgrad.data import Augment, Dataset, Split
from lplgrad.models import LossPredictionModule, ResNet18
from lplgrad.runtime.distributed import world
from lplgrad.strategies import QueryContext, create_strategy
from tests.batchnorm import randomize_batchnorm


def synthetic(count: int, size: int, device: torch.device) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    split = Split(images.to(device), (torch.arange(count) % 10).to(device))
    return Dataset("bench", split, split, [str(c) for c in range(10)], (0.5,) * 3, (0.25,) * 3, Augment())


def worker(args: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(10, width=args.width)).to(device)
    aux_model = LossPredictionModule(model.feature_channels).to(device)
    dataset = synthetic(args.candidates, 32, device)
    strategy = create_strategy(args.strategy)
    context = QueryContext(
        model, dataset, torch.arange(args.candidates), torch.arange(0), torch.Generator().manual_seed(0), aux_model
    )
    strategy.select(context, 10)  # warm-up
    times = []
    for _ in range(args.repeat):
        dist.barrier()
        start = time.perf_counter()
        strategy.select(context, 10)
        if cuda:
            torch.cuda.synchronize()
        elapsed = torch.tensor([time.perf_counter() - start])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the round waits for the slowest process
        times.append(float(elapsed))
    if world()[0] == 0:
        print(json.dumps({"processes": world()[1], "seconds": min(times)}))
    dist.destroy_process_group()


def launch(processes: int, args: argparse.Namespace) -> float:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [torchrun, "--standalone", f"--nproc_per_node={processes}", __file__, "--worker", *sys.argv[1:]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4096)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--strategy", default="lplgrad")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    gpus = torch.cuda.device_count()
    device = f"{gpus} GPU(s)" if gpus else f"cpu ({os.cpu_count()} cores)"
    print(f"{args.strategy}: {args.candidates} candidates, 32x32, width {args.width}, on {device}")
    one = launch(1, args)
    print(f"1 process:   {args.candidates / one:8.0f} images/s", flush=True)
    processes = min(args.processes, gpus) if gpus else args.processes  # one GPU per process
    if processes < 2:
        print("one GPU: only the single-process figure is measurable here")
        return
    many = launch(processes, args)
    print(f"{processes} processes: {args.candidates / many:8.0f} images/s  ({one / many:.2f}x)")


if __name__ == "__main__":
    main()
