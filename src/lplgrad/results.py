"""results.jsonl: one JSON object per finished (strategy, trial, round), appended as soon as it exists."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row and fsync, so a finished round survives a crash right after it."""
    line = json.dumps(row, separators=(",", ":"), allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All complete rows of a results file; a torn last line (a crash mid-write) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            rows.append(json.loads(line))
    return rows


class StorageError(OSError):
    """Writing the run folder failed (e.g. disk full); what was there before is still valid."""


def storage_error(path: Path, error: OSError) -> StorageError:
    reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
    return StorageError(
        error.errno,
        f"cannot write {path}: {reason}; the run folder still holds its last finished round "
        "(free space, then rerun with --resume)",
    )


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, fsync, rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, error) from error
