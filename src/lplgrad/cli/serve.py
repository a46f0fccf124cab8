"""``lplgrad serve`` (a Label Studio ML backend for a project) and ``lplgrad push`` (its images into
a Label Studio project as tasks): their arguments and what each prints (called by ``cli.main``)."""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

from lplgrad.cli.project import LOOPBACK, allowed_hosts
from lplgrad.errors import UserError
from lplgrad.project import db
from lplgrad.project.exchange import LOCAL_FILES_PREFIX
from lplgrad.project.settings import DEFAULT_BATCH

COMMANDS = ("serve", "push")
KEY_ENV = "LABEL_STUDIO_API_KEY"  # the name Label Studio's own SDK reads
AUTH_ENV = "LPLGRAD_SERVE_BASIC_AUTH"  # USER:PASSWORD, kept out of the process list


def add_parsers(sub: Any) -> None:
    sv = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="a Label Studio ML backend: predictions, lplgrad's order, training on new annotations",
        description="Serve a project as a Label Studio ML backend (docs/label-studio.md).",
    )
    sv.add_argument("project", type=Path, metavar="DIR")
    sv.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=9090)
    sv.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name Label Studio uses to reach the backend, e.g. host.docker.internal (repeatable)",
    )
    sv.add_argument("--strategy", help="strategy of the rounds it trains (default: the project's)")
    sv.add_argument("--k", type=int, default=DEFAULT_BATCH, help=f"images per batch (default {DEFAULT_BATCH})")
    sv.add_argument(
        "--train-every",
        type=int,
        default=5,
        metavar="N",
        help="train a round after every N new labels (0: only on request)",
    )
    _label_studio_flags(sv, required=False)
    sv.add_argument(
        "--basic-auth",
        metavar="USER:PASSWORD",
        default=os.environ.get(AUTH_ENV),
        help=f"require these HTTP Basic credentials on every request (default: ${AUTH_ENV})",
    )
    sv.add_argument(
        "--no-refresh",
        action="store_true",
        help="after a round, do not have Label Studio retrieve the new predictions and select their version",
    )
    sv.add_argument("--record", type=Path, metavar="DIR", help="write every request body there, tokens removed")

    ps = sub.add_parser(
        "push",
        allow_abbrev=False,
        help="send the current batch (or all unlabeled images) to a Label Studio project, with predictions",
    )
    ps.add_argument("project", type=Path, metavar="DIR")
    _label_studio_flags(ps, required=True)
    ps.add_argument("--ls-project", type=int, required=True, metavar="ID", help="the Label Studio project's id")
    ps.add_argument("--all", action="store_true", help="every unlabeled image, not only the current batch")
    ps.add_argument("--url-prefix", default=LOCAL_FILES_PREFIX, help="prefix of the tasks' image URLs")


def _label_studio_flags(parser: Any, required: bool) -> None:
    parser.add_argument(
        "--label-studio-url",
        required=required,
        metavar="URL",
        help="Label Studio's address, e.g. http://localhost:8080"
        + ("" if required else " (default: what /setup says)"),
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(KEY_ENV),
        help=f"a Label Studio API key (personal access token or legacy token; default: ${KEY_ENV}"
        + ("" if required else "; needs --label-studio-url; without it, the token /setup sends")
        + ")",
    )


def run(args: argparse.Namespace) -> None:
    try:
        if args.command == "serve":
            serve(args)
        else:
            push(args)
    except sqlite3.DatabaseError as error:
        raise UserError(f"{args.project / db.DB_FILE}: {db.damage_hint(error)}") from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn  # imported here: only this command needs the web stack

    from lplgrad.serve.app import ServeOptions, create_app
    from lplgrad.serve.auth import parse_credentials
    from lplgrad.serve.label_studio_api import check_url

    if args.k < 1 or args.train_every < 0:
        raise UserError(f"--k must be >= 1 and --train-every >= 0, got {args.k} and {args.train_every}")
    if args.api_key and not args.label_studio_url:  # the key goes only where the operator says
        raise UserError(
            f"--api-key (or ${KEY_ENV}) needs --label-studio-url: the key is sent only to the Label Studio you "
            "name, never to the hostname a /setup request gives"
        )
    options = ServeOptions(
        strategy=args.strategy,
        k=args.k,
        train_every=args.train_every,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
        basic_auth=parse_credentials(args.basic_auth) if args.basic_auth else None,
        label_studio_url=check_url(args.label_studio_url) if args.label_studio_url else None,
        api_key=args.api_key or None,
        record=args.record,
        refresh=not args.no_refresh,
    )
    app = create_app(args.project, options)
    _check_port(args.host, args.port)
    if args.host not in LOOPBACK:
        auth = "" if options.basic_auth else "; add --basic-auth"
        print(f"warning: serving on {args.host}: anyone who can reach it can label this project{auth}", file=sys.stderr)
    print(f"Label Studio ML backend for {args.project} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    # uvicorn's access log stays off: the app logs each request on one line (serve.app.RequestLog)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _check_port(host: str, port: int) -> None:
    """A port already taken (or not a port) is a one-line error here, not a server traceback."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, OverflowError) as error:
        raise UserError(f"cannot serve on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None


def push(args: argparse.Namespace) -> None:
    from lplgrad.serve.label_studio_api import LabelStudio, check_url
    from lplgrad.serve.push import push as push_tasks

    if not args.api_key:
        raise UserError(f"push needs --api-key (or ${KEY_ENV}): a Label Studio API token")
    db.require_project(args.project)
    client = LabelStudio(check_url(args.label_studio_url), args.api_key)
    done = push_tasks(args.project, client, args.ls_project, args.all, args.url_prefix)
    print(
        f"{done.sent} task(s) sent to Label Studio project {args.ls_project}, {done.with_prediction} with a "
        f"prediction ({done.version}); {done.already} already there"
        + (f"; {done.unreadable} image(s) could not be read, sent without a prediction" if done.unreadable else "")
    )
