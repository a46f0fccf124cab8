"""results.jsonl: one JSON object per finished (strategy, trial, round), appended as soon as it exists."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file in the same folder, fsync, rename over ``path``:
    a kill at any instant leaves either the old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, error) from error


def write_atomic(path: Path, text: str) -> None:
    """Atomically replace a text file (see ``write_atomic_with``)."""
    write_atomic_with(path, lambda handle: handle.write(text.encode("utf-8")))
