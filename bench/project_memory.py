"""Peak memory of a labeling project whose pool is larger than one would hold in memory.

    python bench/project_memory.py [--images 100000] [--size 64] [--work /tmp/lplgrad-bench]

Generates N random size x size PNGs in 10 coloured classes, then runs, each in its own process so
that its peak resident memory (ru_maxrss of the child) is its own: ``lplgrad init``, a cold-start
``query``, an ``import`` of the first batch's true labels, and a trained ``query`` (lplgrad
strategy, the default candidate subset of 10,000, width 16, 2 epochs). Prints seconds and peak
RSS per command, and the size of the decoded pool for comparison.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [f"c{i}" for i in range(10)]


def generate(root: Path, count: int, size: int) -> None:
    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
        pixels[..., i % 3] += 40 + 17 * (i % 10)
        Image.fromarray(pixels).save(root / f"{i // 1000:03d}" / f"{i:06d}.png", compress_level=1)

    for folder in range(0, count, 1000):
        (root / f"{folder // 1000:03d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


# The child reports its own peak RSS: ru_maxrss of RUSAGE_CHILDREN is a maximum over all children.
CHILD = (
    "import resource, sys\n"
    "from lplgrad.cli.main import main\n"
    "code = main(['-q', *sys.argv[1:]])\n"
    "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def prepare(work: Path, images: int, size: int) -> tuple[Path, Path]:
    """WORK/pool (generated once, kept for the next run) and WORK/project, which must not exist yet."""
    pool, project = work / "pool", work / "project"
    if not pool.exists():
        start = time.perf_counter()
        generate(pool, images, size)
        print(f"generated {images} {size}x{size} PNGs in {time.perf_counter() - start:.0f} s")
    if project.exists():
        raise SystemExit(f"{project} exists; remove it first")
    return pool, project


def run(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one lplgrad command in a child process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    kib = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("maxrss")))
    return seconds, kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lplgrad-bench"))
    args = parser.parse_args()
    pool, project = prepare(args.work, args.images, args.size)
    decoded_mib = args.images * 3 * args.size * args.size / 2**20
    print(f"the whole pool decoded would be {decoded_mib:.0f} MiB of uint8 ({4 * decoded_mib:.0f} MiB as float32)")
    tiny = [
        "--set",
        "train.epochs=2",
        "--set",
        "train.min_steps=0",
        "--set",
        "model.backbone=resnet18",
        "--set",
        "train.finetune=all",
    ]
    steps = [
        ["init", str(project), "--images", str(pool), "--classes", ",".join(CLASSES), *tiny],
        ["query", str(project), "--k", "200"],
    ]
    for command in steps:
        seconds, peak = run(command)
        print(f"lplgrad {command[0]:6s}: {seconds:6.1f} s, peak RSS {peak:7.0f} MiB")
    batch = project / "batches" / "round-1" / "batch.csv"
    rows = list(csv.DictReader(batch.open()))
    for row in rows:
        row["label"] = CLASSES[int(Path(row["path"]).stem) % 10]
    with (batch.parent / "filled.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for command in (["import", str(project), str(batch.parent / "filled.csv")], ["query", str(project), "--k", "200"]):
        seconds, peak = run(command)
        print(f"lplgrad {command[0]:6s}: {seconds:6.1f} s, peak RSS {peak:7.0f} MiB")


if __name__ == "__main__":
    main()
