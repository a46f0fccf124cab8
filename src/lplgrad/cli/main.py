"""Command line: ``lplgrad run | demo | embed | report | strategies | presets | datasets`` here, and the labeling
project's ``init | add | query | import | status | export | predict | label`` (``cli/project.py``).
Only these two modules print."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from lplgrad.cli import project as project_commands
from lplgrad.cli import serve as serve_commands
from lplgrad.config import compat
from lplgrad.config import files as config_files
from lplgrad.config import schema as cfg
from lplgrad.data.loaders import check_dataset_name, list_datasets
from lplgrad.errors import UserError, one_line
from lplgrad.experiment.results import RESULTS_FILE, read_rows
from lplgrad.experiment.runner import TrialsFailed, run_experiment
from lplgrad.project.db import damage_hint
from lplgrad.report.summary import accuracy_table
from lplgrad.report.write import write_report
from lplgrad.runtime.atomic_io import StorageError
from lplgrad.runtime.distributed import launch_rank, launched, peer_failure, process_group
from lplgrad.selfsup import SimCLRConfig
from lplgrad.selfsup.embed import embed_pool, embed_project
from lplgrad.selfsup.pretrained import backbone_pool, backbone_project
from lplgrad.strategies import list_strategies, strategy_class

# CLI flag -> config key. Flags are applied after --config and before --set.
FLAG_KEYS = {
    "dataset": "data.name",
    "strategy": "active.strategies",
    "trials": "active.trials",
    "initial": "active.initial_size",
    "query": "active.query_size",
    "rounds": "active.rounds",
    "budget": "active.budget",
    "subset": "active.candidate_subset",
    "epochs": "train.epochs",
    "width": "model.width",
    "seed": "seed",
    "device": "device",
    "data_root": "data.root",
    "download": "data.download",
    "trial_offset": "active.trial_offset",
    "deterministic": "deterministic",
    "save_artifacts": "save_artifacts",
}


def folder(text: str) -> Path:
    """An --out value: a folder path, never the empty string (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expects a folder path, got an empty string")
    return Path(text)


def _run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="run an active learning experiment",
        description="Run trials x strategies x rounds and write DIR/results.jsonl.",
    )
    run.add_argument("--dataset", help=f"one of: {', '.join(list_datasets())} (default digits)")
    run.add_argument("--strategy", help="comma-separated strategy names (see `lplgrad strategies`)")
    run.add_argument("--preset", help="a shipped preset (see `lplgrad presets`); other options override it")
    run.add_argument("--trials", type=int, help="number of trials; trial t uses seed + t")
    run.add_argument("--trial-offset", type=int, help="first trial to run (to split trials across machines)")
    aliases = compat.FLAG_ALIASES  # the short names of 0.1
    run.add_argument(
        "--initial-size", *aliases["--initial-size"], dest="initial", type=int, help="random initial labeled set (B)"
    )
    run.add_argument("--query-size", *aliases["--query-size"], dest="query", type=int, help="images labeled per round")
    stop = run.add_mutually_exclusive_group()
    stop.add_argument("--rounds", type=int, help="training rounds (rounds - 1 queries); overrides a preset's budget")
    stop.add_argument("--budget", type=int, help="final labeled-set size (A); overrides rounds")
    run.add_argument(
        "--candidate-subset",
        *aliases["--candidate-subset"],
        dest="subset",
        type=int,
        help="unlabeled candidates scored per round (R)",
    )
    run.add_argument("--epochs", type=int, help="training epochs per round")
    run.add_argument("--width", type=int, help="ResNet-18 base width (64 in the paper)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--data-root", help="folder of torchvision datasets (default ./data)")
    run.add_argument("--download", action="store_true", default=None, help="download torchvision datasets")
    run.add_argument(
        "--save-artifacts",
        action="store_true",
        default=None,
        help="keep test features and confidences at 3 rounds for the t-SNE / confidence figures",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished rounds")
    run.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic torch kernels: makes GPU runs repeatable (slower); CPU runs are bit-identical "
        "without it, and it refuses train.channels_last there",
    )
    run.add_argument("--config", type=Path, help="TOML file of settings (e.g. a previous run's config.toml)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.01 (repeatable)",
    )
    run.add_argument("--out", type=folder, required=True, help="output folder (config.toml, results.jsonl)")


def _embed_parser(sub: Any) -> None:
    embed = sub.add_parser(
        "embed",
        allow_abbrev=False,
        help="features of the training pool for typiclust / probcover: SimCLR, or a pretrained backbone's (--backbone)",
        description="Train SimCLR on the training images of a run's dataset (no labels read), or with --backbone "
        "take a pretrained backbone's pooled features, and write them: FILE.npy, rows in the pool's order, and for "
        "image folders and labeling projects FILE.csv (path,row). Use them with --set active.embeddings=FILE.npy "
        "(and active.embeddings_index=FILE.csv).",
    )
    embed.add_argument("--dataset", help=f"one of: {', '.join(list_datasets())} (default digits)")
    embed.add_argument("--preset", help="a shipped preset: its dataset, width and device")
    embed.add_argument("--project", type=Path, help="a labeling project: its pool, image size, width and device")
    embed.add_argument("--config", type=Path, help="TOML file of settings (e.g. a run's config.toml)")
    embed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    embed.add_argument(
        "--backbone",
        help="a pretrained backbone (efficientnet-lite0, torchvision:NAME): write its pooled features, no SimCLR",
    )
    embed.add_argument("--width", type=int, help="ResNet-18 base width of the SimCLR backbone")
    embed.add_argument("--seed", type=int, help="seed of the initialization and the views (default 0)")
    embed.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    embed.add_argument("--data-root", help="folder of torchvision datasets (default ./data)")
    embed.add_argument("--download", action="store_true", default=None, help="download torchvision datasets")
    defaults = SimCLRConfig()
    embed.add_argument(
        "--epochs", dest="embed_epochs", metavar="EPOCHS", type=int, default=defaults.epochs, help="SimCLR epochs"
    )
    embed.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per SimCLR batch")
    embed.add_argument("--temperature", type=float, default=defaults.temperature, help="NT-Xent temperature")
    embed.add_argument("--base-lr", type=float, default=defaults.base_lr, help="SGD lr per 256 images (cosine decay)")
    embed.add_argument("--out", type=Path, required=True, metavar="FILE.npy", help="the embeddings file to write")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lplgrad",
        allow_abbrev=False,
        description="Deep active learning for image classification: LPLgrad and its baselines.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _embed_parser(sub)
    demo = sub.add_parser(
        "demo", allow_abbrev=False, help="quick start: lplgrad vs entropy vs random on the bundled digits"
    )
    demo.add_argument("--out", type=folder, help="also write config.toml and results.jsonl here")
    report = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="tables and figures of one or more results folders",
        description="Write report.md and PNG figures from DIR/results.jsonl (merging slices).",
    )
    report.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="results folders of one run")
    report.add_argument("--out", type=folder, help="where report.md and figures go (default: the first DIR)")
    project_commands.add_parsers(sub)
    serve_commands.add_parsers(sub)
    sub.add_parser("strategies", help="list the registered query strategies")
    sub.add_parser("presets", help="list the shipped experiment presets (the paper's Table II and more)")
    sub.add_parser("datasets", help="list the dataset names")
    return parser


def config_from_args(args: argparse.Namespace) -> cfg.RunConfig:
    """Preset <- file <- flags <- --set, then resolved over the defaults."""
    values: dict[str, Any] = config_files.read_preset(args.preset) if args.preset else {}
    if args.config:
        values.update(config_files.read_toml(args.config))
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)  # `embed` takes only some of run's flags
        if value is not None:
            values[key] = value
    if getattr(args, "rounds", None) is not None:
        values["active.budget"] = None  # --rounds asks to stop by rounds, even over a preset's or file's budget
    values.update(config_files.parse_set(args.set))
    config = cfg.resolve(values)
    check_dataset_name(config.data.name)
    for name in config.active.strategies:
        strategy_class(name)
    return config


def demo_config() -> cfg.RunConfig:
    """About a minute on a 2-core CPU: 3 strategies x 2 trials x 5 rounds with the digits defaults."""
    return cfg.resolve(
        {
            "data.name": "digits",
            "active.strategies": ["lplgrad", "entropy", "random"],
            "active.trials": 2,
            "device": "cpu",
        }
    )


def _which_process() -> str:
    """ " on rank N" under torchrun, where every process may report its own error."""
    return f" on rank {launch_rank()}" if launched() else ""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so the same cleanup runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _main(args)
        sys.stdout.flush()  # a pipe's buffer is written here, where its reader leaving is caught
        return code
    except BrokenPipeError:  # `lplgrad status | head`: the reader left; say nothing more, as cat does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports it
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's flush at exit does not raise a second BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no real file descriptor (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet or launch_rank() > 0 else logging.INFO,  # torchrun: rank 0 logs
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command in project_commands.COMMANDS:
            project_commands.run(args)
        elif args.command in serve_commands.COMMANDS:
            serve_commands.run(args)
        elif args.command == "strategies":
            print("\n".join(list_strategies()))
        elif args.command == "report":
            print(f"report: {write_report(args.dirs, args.out)}")
        elif args.command == "presets":
            print("\n".join(config_files.list_presets()))
        elif args.command == "datasets":
            print("\n".join(list_datasets()))
        elif args.command == "demo":
            start = time.perf_counter()
            rows = run_experiment(demo_config(), args.out, progress=True)
            print(f"\nTest accuracy (%), mean ± std over 2 trials, digits, {time.perf_counter() - start:.0f} s:")
            print(accuracy_table(rows))
        elif args.command == "embed":
            settings = SimCLRConfig(
                epochs=args.embed_epochs, batch_size=args.batch_size, base_lr=args.base_lr, temperature=args.temperature
            )
            if args.project is not None:
                if args.dataset or args.preset or args.config or args.set:
                    raise UserError(
                        "embed --project uses the project's settings; drop --dataset/--preset/--config/--set"
                    )
                try:
                    if args.backbone:
                        summary = backbone_project(args.project, args.backbone, args.out)
                    else:
                        summary = embed_project(args.project, settings, args.out)
                except sqlite3.DatabaseError as error:
                    raise UserError(f"{args.project / 'project.db'}: {damage_hint(error)}") from None
            elif args.backbone:  # the backbone's settings (model.weights, model.input_size) are checked for it
                args.set = [f"model.backbone={args.backbone}", *args.set]
                summary = backbone_pool(config_from_args(args), args.backbone, args.out)
            else:
                summary = embed_pool(config_from_args(args), settings, args.out)
            images, dims = summary.shape
            print(f"embeddings: {summary.embeddings} ({images} x {dims}, {summary.seconds:.0f} s)")
            index = f" --set active.embeddings_index={summary.index}" if summary.index else ""
            print(f"use them with: --set active.embeddings={summary.embeddings}{index}")
        elif args.command == "run":
            config = config_from_args(args)
            with process_group(config.device):  # under torchrun: one process per device
                run_experiment(config, args.out, progress=True, resume=args.resume)
            if launch_rank() == 0:
                print(accuracy_table(read_rows(args.out / RESULTS_FILE)))  # the whole run, resumed parts included
                print(f"results: {args.out / 'results.jsonl'}")
        return 0
    except UserError as error:
        print(f"lplgrad: error{_which_process()}: {one_line(str(error))}", file=sys.stderr)
        return 2
    except (TrialsFailed, StorageError) as error:
        print(f"lplgrad: error{_which_process()}: {one_line(str(error))}", file=sys.stderr)
        return 1
    except Exception as error:
        if not (launched() and peer_failure(error)):
            raise
        print(f"lplgrad: error{_which_process()}: another process stopped (its error is above)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        out = getattr(args, "out", None)
        if args.command == "run" and out is not None and launch_rank() == 0:
            hint = f"; continue with: lplgrad run --config {out / 'config.toml'} --out {out} --resume"
        else:
            hint = ""
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"lplgrad: {what}: every finished round is saved{hint}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130  # 128 + the signal's number, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
