"""Compare training recipes at small labeled sets: test accuracy and time, several seeds.

    python scripts/training_recipes.py --dataset imagefolder:/tmp/cifar10-jpeg --sizes 100 500 2000 \
        --seeds 0 1 2 --out docs/results/training-recipes/cifar10.jsonl
    python scripts/training_recipes.py --dataset digits --sizes 100 500 1000 --out .../digits.jsonl

Each (recipe, labeled size, seed) trains a fresh width-16 ResNet-18 (plain cross-entropy, as most
strategies train) on a seeded random labeled subset and evaluates it on the whole test split.
Finished runs are appended to --out as JSON lines, so an interrupted comparison resumes; a
markdown table of mean ± std accuracy and mean seconds is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from lplgrad.config.schema import resolve
from lplgrad.data import Dataset, load_dataset
from lplgrad.models.build import build_models
from lplgrad.report.metrics import mean_std
from lplgrad.train.fit import fit
from lplgrad.train.inference import evaluate

# Each recipe: --set style overrides of the dataset's defaults (applied after --epochs).
RECIPES: dict[str, dict[str, Any]] = {
    "epochs only (0.1 defaults)": {},
    "min 300 steps": {"train.min_steps": 300},
    "min 300 steps, cosine, lr 0.05": {"train.min_steps": 300, "train.schedule": "cosine", "train.lr": 0.05},
    "min 300 steps, cosine, lr 0.05, smoothing 0.1": {
        "train.min_steps": 300,
        "train.schedule": "cosine",
        "train.lr": 0.05,
        "train.label_smoothing": 0.1,
    },
}


_LOADED: dict[str, Dataset] = {}  # decoded once per process


def run_one(dataset_name: str, recipe: dict[str, Any], size: int, seed: int, args: argparse.Namespace) -> dict:
    base = {"data.name": dataset_name, "model.width": args.width, "train.epochs": args.epochs, "device": "cpu"}
    config = resolve({**base, "train.min_steps": 0, **recipe})
    if config.data.name not in _LOADED:
        _LOADED[config.data.name] = load_dataset(config.data)
    dataset = _LOADED[config.data.name]
    labeled = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(1000 + seed))[:size]
    model, _ = build_models(config, dataset, seed, torch.device("cpu"))
    start = time.perf_counter()
    trained = fit(model, dataset, labeled, config.train, seed)
    seconds = time.perf_counter() - start
    accuracy, _ = evaluate(model, dataset)
    return {"accuracy": accuracy, "seconds": seconds, "steps": trained.steps, "epochs": trained.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    for size in args.sizes:
        for name, recipe in RECIPES.items():
            for seed in args.seeds:
                key = {"dataset": args.dataset, "recipe": name, "size": size, "seed": seed, "epochs_asked": args.epochs}
                if any(all(row.get(k) == v for k, v in key.items()) for row in done):
                    continue
                row = {**key, **run_one(args.dataset, recipe, size, seed, args)}
                print(json.dumps(row), flush=True)
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                done.append(row)
    print_table(done, args)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    rows = [r for r in rows if r["dataset"] == args.dataset and r["epochs_asked"] == args.epochs]
    print(
        f"\n{args.dataset}, width {args.width}, --epochs {args.epochs}; test accuracy % (mean ± std over seeds), s/run"
    )
    print("| recipe | " + " | ".join(f"{s} labeled" for s in args.sizes) + " |")
    print("| --- |" + " --- |" * len(args.sizes))
    for name in RECIPES:
        cells = []
        for size in args.sizes:
            found = [r for r in rows if r["recipe"] == name and r["size"] == size]
            if not found:
                cells.append("-")
                continue
            mean, std = mean_std([100 * r["accuracy"] for r in found])
            seconds = sum(r["seconds"] for r in found) / len(found)
            cells.append(f"{mean:.1f} ± {std:.1f} ({seconds:.0f} s, {found[0]['steps']} steps)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
