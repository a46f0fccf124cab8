"""Writing files so that a crash or a full disk never leaves a half-written one, and the one-line
storage error that says so."""

from __future__ import annotations

import errno
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


class StorageError(OSError):
    """Writing the run folder failed (e.g. disk full); what was there before is still valid."""


def storage_error(path: Path, error: OSError, reading: bool = False) -> StorageError:
    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    if reading:
        return StorageError(error.errno, f"cannot read {path}: {reason}")
    return StorageError(
        error.errno,
        f"cannot write {path}: {reason}; what was written before is still whole (free space, then run the "
        "command again)",
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


def serialize(obj: Any) -> bytes:
    """torch.save into memory, so a full disk shows up as an OSError of the file write (torch.save
    into a file raises RuntimeError instead) and becomes the one-line storage error."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_atomic(path: Path, obj: Any) -> None:
    """torch.save, atomically: the old file stays valid until the new one is whole."""
    payload = serialize(obj)
    write_atomic_with(path, lambda handle: handle.write(payload))


def write_atomic(path: Path, text: str) -> None:
    """Atomically replace a text file (see ``write_atomic_with``)."""
    write_atomic_with(path, lambda handle: handle.write(text.encode("utf-8", "surrogateescape")))
