"""An exclusive lock on a folder for the life of a command, so two commands never write it at once.

An advisory ``flock`` on FOLDER/.lock, released by the kernel when the process dies (a killed
command never leaves a stale lock); the file holds the holder's pid and command for the message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lplgrad.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold FOLDER/.lock while inside; if another process holds it, a UserError naming it.
    ``what`` names the folder in the message (e.g. "run folder", "project")."""
    try:
        handle = open(folder / LOCK_FILE, "a+b", buffering=0)  # noqa: SIM115 (held until the end)
    except OSError as error:  # a read-only disk or folder, a full disk, no permission
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise UserError(f"{what} {folder} cannot be changed here ({reason}); nothing was written") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode("utf-8", "replace").strip() or "pid unknown"
            raise UserError(f"{what} {folder} is busy: {holder} holds it; wait for it to end") from None
        command = " ".join(["lplgrad", *sys.argv[1:2]]) if sys.argv else "lplgrad"
        try:  # who holds it, for the message above; the lock itself is the flock
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} ({command})\n".encode())  # unbuffered: nothing left to flush at close
        except OSError:  # a full disk: the note is lost, the lock holds
            pass
        yield
