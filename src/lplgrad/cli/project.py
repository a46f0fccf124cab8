"""The labeling project's subcommands: their arguments and what each prints (called by ``lplgrad.cli.main``)."""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

from lplgrad.config import files as config_files
from lplgrad.errors import UserError
from lplgrad.project import db, workflow
from lplgrad.project.duplicates import describe
from lplgrad.project.exchange import LOCAL_FILES_PREFIX
from lplgrad.project.predict import predict_files
from lplgrad.project.query import query
from lplgrad.project.review import DEFAULT_FOLDS, ReviewResult, review
from lplgrad.project.settings import DEFAULT_BATCH, read_settings
from lplgrad.runtime.distributed import launch_rank, process_group

COMMANDS = ("init", "add", "query", "import", "status", "review", "export", "predict", "label")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def add_parsers(sub: Any) -> None:
    init = sub.add_parser("init", allow_abbrev=False, help="make a labeling project for a folder of your images")
    init.add_argument("project", type=Path, metavar="DIR")
    init.add_argument("--images", type=Path, required=True, help="folder of images to label (searched recursively)")
    init.add_argument("--classes", required=True, help="comma-separated class names, e.g. cat,dog")
    init.add_argument("--labeled", type=Path, help="a tree of class folders already labeled")
    init.add_argument("--labels", type=Path, metavar="FILE.csv", help="(path, label) rows for images under --images")
    init.add_argument("--test", type=Path, help="a labeled tree of class folders used only to measure accuracy")
    init.add_argument("--image-size", type=int, help="square size images are decoded to (default: native up to 64)")
    init.add_argument("--config", type=Path, help="TOML file of training settings")
    init.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a training setting")

    add = sub.add_parser("add", allow_abbrev=False, help="register more images in a project")
    add.add_argument("project", type=Path, metavar="DIR")
    add.add_argument("--images", type=Path, required=True)
    add.add_argument(
        "--accept-changed",
        action="store_true",
        help="registered images under --images that now hold other bytes: register their new content",
    )

    q = sub.add_parser("query", allow_abbrev=False, help="train on the labels so far and write the next batch")
    q.add_argument("project", type=Path, metavar="DIR")
    q.add_argument("--strategy", help="a registered strategy (default: the project's, lplgrad)")
    q.add_argument("--k", type=int, default=DEFAULT_BATCH, help=f"images in the batch (default {DEFAULT_BATCH})")
    q.add_argument("--subset", type=int, help="unlabeled candidates scored (default: the project's, 10,000)")
    q.add_argument("--include-pending", action="store_true", help="also query images waiting in an earlier batch")
    q.add_argument("--url-prefix", default=LOCAL_FILES_PREFIX, help="prefix of image URLs in label-studio.json")

    imp = sub.add_parser(
        "import", allow_abbrev=False, help="take labels back: filled batch.csv or Label Studio exports"
    )
    imp.add_argument("project", type=Path, metavar="DIR")
    imp.add_argument("files", type=Path, nargs="+", metavar="FILE")
    imp.add_argument("--relabel", action="store_true", help="allow changing the label of a labeled image")
    imp.add_argument(
        "--on-conflict",
        choices=["newest", "error"],
        default="newest",
        help="several disagreeing answers for one image: take the newest (default) or stop",
    )

    st = sub.add_parser("status", allow_abbrev=False, help="images, labels per class and rounds of a project")
    st.add_argument("project", type=Path, metavar="DIR")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--no-check", action="store_true", help="skip checking the database page by page (large projects)")

    rv = sub.add_parser(
        "review", allow_abbrev=False, help="the answers the model doubts most, as a batch to relabel, and duplicates"
    )
    rv.add_argument("project", type=Path, metavar="DIR")
    rv.add_argument(
        "--k", type=int, default=DEFAULT_BATCH, help=f"doubtful answers in the batch (default {DEFAULT_BATCH})"
    )
    rv.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"k-fold models (default {DEFAULT_FOLDS})")
    rv.add_argument("--url-prefix", default=LOCAL_FILES_PREFIX, help="prefix of image URLs in label-studio.json")

    ex = sub.add_parser("export", allow_abbrev=False, help="the labels as CSV, or as class folders")
    ex.add_argument("project", type=Path, metavar="DIR")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--format", choices=["csv", "imagefolder"], default="csv")
    ex.add_argument("--copy", action="store_true", help="imagefolder: copy the files instead of linking them")

    lb = sub.add_parser("label", allow_abbrev=False, help="label in the browser while the model learns")
    lb.add_argument("project", type=Path, metavar="DIR")
    lb.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    lb.add_argument("--port", type=int, default=8765)
    lb.add_argument("--strategy", help="strategy of the rounds the page trains (default: the project's)")
    lb.add_argument(
        "--k", type=int, default=DEFAULT_BATCH, help=f"images per batch the page trains (default {DEFAULT_BATCH})"
    )
    lb.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or address other machines use to reach the page (repeatable; with --host 0.0.0.0 "
        "this machine's names and addresses are allowed already)",
    )

    pr = sub.add_parser("predict", allow_abbrev=False, help="the latest model's predictions for images")
    pr.add_argument("project", type=Path, metavar="DIR")
    pr.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files or folders")
    pr.add_argument("--out", type=Path, required=True, metavar="FILE.csv")


def run(args: argparse.Namespace) -> None:
    """Carry out one project subcommand and print its summary; SQLite's errors (a damaged file, a full
    disk, a read-only folder) become one-line errors naming the database."""
    try:
        _run(args)
    except sqlite3.DatabaseError as error:
        raise UserError(f"{args.project / db.DB_FILE}: {db.damage_hint(error)}") from None


def _run(args: argparse.Namespace) -> None:
    if args.command == "init":
        values: dict[str, Any] = config_files.read_toml(args.config) if args.config else {}
        values.update(config_files.parse_set(args.set))
        if args.image_size is not None:
            values["data.image_size"] = args.image_size
        counts = workflow.init(
            args.project, args.images, args.classes.split(","), args.labeled, args.labels, args.test, values
        )
        print(f"project {args.project}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
        config = read_settings(args.project)
        if config.train.finetune == "head":
            weights = "ImageNet" if config.model.weights in ("default", "imagenet") else config.model.weights
            model = f"{config.model.backbone} ({weights} weights) frozen, a linear head on its features"
        else:
            model = f"{config.model.backbone} trained from scratch (width {config.model.width})"
        print(f"model: {model}; strategy {config.active.strategies[0]} (change them with --set)")
    elif args.command == "add":
        counts = workflow.add(args.project, args.images, args.accept_changed)
        print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    elif args.command == "query":
        with process_group(_project_device(args.project)):  # under torchrun: one process per device
            result = query(args.project, args.strategy, args.k, args.subset, args.include_pending, args.url_prefix)
        if launch_rank() > 0:
            return
        measured = (
            f"accuracy {100 * result.accuracy:.1f}% on the {result.accuracy_on} images"
            if result.accuracy is not None
            else "no accuracy (no test images and too few labels to hold some out)"
        )
        how = (
            "cold start: a random batch, no labels yet"
            if result.cold_start
            else f"trained on {result.labeled}, {measured}"
        )
        print(f"round {result.round}: {result.queried} images to label in {result.folder} ({how})")
    elif args.command == "import":
        imported = workflow.import_labels(args.project, args.files, args.relabel, args.on_conflict)
        print(
            f"{imported.labeled} labeled, {imported.skipped} skipped, {imported.unchanged} unchanged, "
            f"{imported.relabeled} relabeled"
        )
    elif args.command == "status":
        print_status(workflow.status(args.project, check=not args.no_check), args.json)
    elif args.command == "review":
        print_review(args.project, review(args.project, args.k, args.folds, args.url_prefix))
    elif args.command == "export":
        if args.format == "csv":
            print(f"{workflow.export_csv(args.project, args.out)} labels written to {args.out}")
        else:
            print(f"{workflow.export_imagefolder(args.project, args.out, args.copy)} images under {args.out}")
    elif args.command == "label":
        serve(args)
    elif args.command == "predict":
        print(f"{predict_files(args.project, args.images, args.out)} predictions written to {args.out}")


def print_review(project: Path, result: ReviewResult) -> None:
    print(
        f"review {result.batch}: out-of-sample predictions agree with {100 * result.agreement:.0f}% of the "
        f"{result.reviewed} answers; {result.flagged} are flagged (confident learning), the {result.listed} most "
        f"doubtful in {result.folder / 'batch.csv'}"
    )
    if result.agreement < 0.9:
        print("  the model is often wrong itself, so many flags are its errors: start at the top of the batch")
    if result.listed:
        print(
            "  its label column holds the current label and suggested_label the model's: correct the wrong ones, "
            f"then `lplgrad import {project} {result.folder / 'batch.csv'} --relabel` (old labels are kept)"
        )
    for line in describe(result.duplicates, result.pool_images):
        print(line)
    print(f"  all pairs: {result.folder / 'duplicates.csv'}")


def _project_device(project: Path) -> str:
    """The project's ``device`` setting, or "auto" where there is no readable project (``query``
    then says what is wrong)."""
    try:
        return read_settings(project).device
    except (UserError, OSError):
        return "auto"


def print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status))
        return
    print(
        f"{status['images']} images: {status['labeled']} labeled, {status['pending']} pending in a batch, "
        f"{status['unlabeled']} unlabeled; {status['test_images']} test images"
    )
    print("labeled per class: " + ", ".join(f"{k} {v}" for k, v in status["per_class"].items()))
    for r in status["rounds"]:
        print(f"round {r['round']}: {r['strategy']}, trained on {r['labeled']}, queried {r['queried']}, {_measured(r)}")
    measured = {name: value for name, value in status["per_class_accuracy"].items() if value is not None}
    if measured:
        print("accuracy per class (latest round): " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in measured.items()))
    stopping = status["stopping"]
    if stopping["criteria"]:
        print(f"when to stop: {stopping['summary']}")
        for c in stopping["criteria"]:
            state = f"met since round {c['since']}" if c["met"] else "not met"
            print(f"  {c['name']}: {state}; {c['detail']}")
    for line in status["duplicates"]:
        print(line)
    if stopping["ece"] is not None:
        print(
            f"calibration (latest round): expected calibration error {100 * stopping['ece']:.1f}%; suggested "
            f"confidences are temperature-scaled (T = {stopping['temperature']:.2f})"
        )
        bins = [
            f"{10 * i}-{10 * i + 10}%: {100 * accuracy:.0f}% ({int(count)})"
            for i, (count, _, accuracy) in enumerate(stopping["reliability"])
            if count and accuracy is not None
        ]
        print("  confidence -> accuracy (images): " + ", ".join(bins))


def _measured(r: dict[str, Any]) -> str:
    """A round's accuracy with its 95% interval and its stop-set kappa, as far as they were measured."""
    if r["accuracy"] is None:
        return "accuracy -"
    interval = ""
    if r["accuracy_low"] is not None:
        interval = f" [{100 * r['accuracy_low']:.1f}, {100 * r['accuracy_high']:.1f}]"
    text = f"accuracy {100 * r['accuracy']:.1f}%{interval} ({r['accuracy_on']})"
    if r["stop_kappa"] is not None:
        text += f", kappa {r['stop_kappa']:.3f}"
    return text


def allowed_hosts(bound: str, extra: list[str]) -> list[str]:
    """The Host header values the page accepts: this machine's loopback names, the address it is bound
    to, the names given with --allowed-host, and for a wildcard address (0.0.0.0, ::) this machine's
    host names and addresses. Any other name is refused (a DNS-rebinding page cannot use its own)."""
    from lplgrad.web.app import LOCAL_HOSTS

    hosts = [*LOCAL_HOSTS, *extra]
    if bound not in LOOPBACK:
        hosts.append(f"[{bound}]" if ":" in bound else bound)
    if bound in WILDCARDS:
        names = {socket.gethostname(), socket.getfqdn()}
        for name in list(names):
            try:
                names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
            except OSError:  # a name that does not resolve: still allowed as typed
                continue
        hosts += [f"[{n}]" if ":" in n else n for n in sorted(names) if n]
    return list(dict.fromkeys(hosts))


def serve(args: argparse.Namespace) -> None:
    import uvicorn  # imported here: only this command needs the web stack

    from lplgrad.web.app import create_app

    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    hosts = allowed_hosts(args.host, args.allowed_host)
    app = create_app(args.project, args.strategy, args.k, hosts)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who can reach it can label this project", file=sys.stderr)
    print(f"labeling {args.project} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
