"""results.jsonl: one JSON object per finished (strategy, trial, round), appended as soon as it exists."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class RoundRecord:
    """One line of results.jsonl: a finished (strategy, trial, round). The schema of the file."""

    strategy: str
    trial: int
    seed: int  # the trial's seed, run seed + trial
    round: int
    labeled: int  # size of the labeled set the model was trained on
    test_accuracy: float  # fraction
    per_class_accuracy: list[float | None]  # None for a class with no test images
    train_seconds: float
    steps: int  # optimizer steps the round trained (train.min_steps may add epochs)
    epochs: int
    query_seconds: float
    candidates: int  # unlabeled images scored after this round (0 in the last round)
    selected: list[int]  # absolute training-set indices queried after this round
    selected_labels: list[int]
    selected_scores: list[float] | None  # None for strategies without scores (random, coreset)
    reduction: str | None  # the gradient-norm reduction of gradient-norm strategies
    device: str

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


REQUIRED_KEYS = ("strategy", "trial", "round", "labeled", "test_accuracy")


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None: results.jsonl must be strict JSON, and
    a NaN there means "undefined" (e.g. the accuracy of a class with no test images)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def row_line(row: dict[str, Any]) -> str:
    """One row as a line of strict JSON (NaN written as null)."""
    return json.dumps(finite_or_null(row), separators=(",", ":"), allow_nan=False) + "\n"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row and fsync, so a finished round survives a crash right after it."""
    line = row_line(row)
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise storage_error(path, error) from error


@dataclass
class ResultsFile:
    """The rows of a results file, and the numbers of the lines that are not rows."""

    rows: list[dict[str, Any]]
    bad_lines: list[int]  # 1-based; a torn last line (a crash mid-write) is not counted


def parse_row(line: str) -> dict[str, Any] | None:
    """One line as a results row, or None when it is not one (blank, not JSON, missing keys)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or any(key not in row for key in REQUIRED_KEYS):
        return None
    return row


def read_results(path: Path) -> ResultsFile:
    """Every valid row of a results file; other lines are numbered in ``bad_lines``."""
    rows, bad = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    break  # torn by a crash mid-append; resume cuts it
                row = parse_row(line)
                if row is None:
                    bad.append(number)
                else:
                    rows.append(row)
    except OSError as error:
        raise storage_error(path, error, reading=True) from error
    return ResultsFile(rows, bad)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All valid rows of a results file (see ``read_results`` for the lines that are not)."""
    return read_results(path).rows


class StorageError(OSError):
    """Writing the run folder failed (e.g. disk full); what was there before is still valid."""


def storage_error(path: Path, error: OSError, reading: bool = False) -> StorageError:
    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    if reading:
        return StorageError(error.errno, f"cannot read {path}: {reason}")
    return StorageError(
        error.errno,
        f"cannot write {path}: {reason}; the run folder still holds its last finished round "
        "(free space, then rerun with --resume)",
    )


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file in the same folder, fsync, rename over ``path``:
    a kill at any instant leaves either the old file or the new one, never a half-written one.
    The temporary name is unique, so two processes writing the same path never share it; it is
    removed on any failure (a full disk, an interrupt), so it cannot keep the disk full."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "xb")  # noqa: SIM115 (closed below, after fsync)
    except OSError as error:
        raise storage_error(path, error) from error
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, error) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Atomically replace a text file (see ``write_atomic_with``)."""
    write_atomic_with(path, lambda handle: handle.write(text.encode("utf-8", "surrogateescape")))
