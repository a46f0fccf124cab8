"""results.jsonl: one JSON object per finished (strategy, trial, round), appended as soon as it exists."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lplgrad.runtime.atomic_io import storage_error

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


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
