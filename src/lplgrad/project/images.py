"""The image files of a project: finding them, fingerprinting them, and decoding a chunk of them.

Files are referenced where they are. Each is registered with its size, modification time and
sha256, and checked against them before it is decoded, so a file that changed or vanished is an
error that names it, never a silently different pixel.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from lplgrad.data.imagefolder import IMAGE_EXTENSIONS, decode_image, header_size
from lplgrad.errors import UserError
from lplgrad.project.db import ImageRow

WORKERS = min(8, (os.cpu_count() or 1) + 2)
CHUNK = 512  # images decoded at once when streaming


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively and sorted; hidden files and folders are skipped."""
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a folder")
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [
            Path(folder) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def fingerprint(path: Path) -> tuple[int, int, int, str]:
    """(size in bytes, mtime in ns, ctime in ns, sha256 hex) of a file, the stat taken around the read
    (a file written while it is hashed is hashed again)."""
    for _ in range(3):
        before = _stat_key(path.stat())
        digest = _sha256(path)
        if _stat_key(path.stat()) == before:
            return (*before, digest)
    raise UserError(f"{path} keeps changing while it is read; register it when it is finished")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def register(
    root: Path, paths: list[Path]
) -> tuple[list[tuple[str, int, int, int, str]], list[str], list[tuple[int, int]]]:
    """Fingerprint decodable files (in threads): ([(relative path, size, mtime, ctime, sha256)],
    undecodable relative paths, [(width, height)] of the decodable ones)."""
    with ThreadPoolExecutor(WORKERS) as pool:
        sizes = list(pool.map(header_size, paths))
        good = [p for p, s in zip(paths, sizes, strict=True) if s is not None]
        prints = list(pool.map(fingerprint, good))
    files = [(p.relative_to(root).as_posix(), *f) for p, f in zip(good, prints, strict=True)]
    bad = [p.relative_to(root).as_posix() for p, s in zip(paths, sizes, strict=True) if s is None]
    return files, bad, [s for s in sizes if s is not None]


def moved_files(rows: list[ImageRow]) -> list[tuple[ImageRow, tuple[int, int, int, str]]]:
    """(row, its fingerprint now) of the rows whose file's (size, mtime, ctime) is not the registered
    one, hashed in threads; a missing file is a UserError."""
    moved = []
    for row in rows:
        try:
            now = _stat_key(row.full_path.stat())
        except OSError:
            raise UserError(f"image {row.full_path} (id {row.id}) is missing; put it back") from None
        if now != _registered_stat(row):
            moved.append(row)
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(zip(moved, pool.map(lambda row: fingerprint(row.full_path), moved), strict=True))


def check_unchanged(rows: list[ImageRow]) -> list[ImageRow]:
    """Every file still holds the bytes it was registered with; returns the rows with the stat they
    have now (``moved_fingerprints`` lists those to store).

    The fast path is the stat: the kernel updates ctime on every write and every mtime change, and no
    call sets it back, so an unchanged (size, mtime, ctime) is an unchanged file. Where any of them
    moved (a restore from backup, a copy, ``touch``) the content decides: the same sha256 is the same
    image; a different one is an error that names the file and the way out."""
    current = {row.id: row for row in rows}
    for row, (size, mtime, ctime, digest) in moved_files(rows):
        if digest != row.sha256:
            raise UserError(
                f"image {row.full_path} (id {row.id}) changed since it was registered (other bytes); restore it, "
                f"or register the new version with: lplgrad add PROJECT --images {row.root} --accept-changed"
            )
        current[row.id] = replace(row, size=size, mtime_ns=mtime, ctime_ns=ctime)
    return [current[row.id] for row in rows]


def _registered_stat(row: ImageRow) -> tuple[int, int, int | None]:
    return row.size, row.mtime_ns, row.ctime_ns


def moved_fingerprints(before: list[ImageRow], after: list[ImageRow]) -> list[tuple[int, int, int, int, str]]:
    """(id, size, mtime, ctime, sha256) of the rows ``check_unchanged`` found with a new stat."""
    return [
        (new.id, new.size, new.mtime_ns, new.ctime_ns or 0, new.sha256)
        for old, new in zip(before, after, strict=True)
        if _registered_stat(old) != _registered_stat(new)
    ]


def decode(rows: list[ImageRow], size: int) -> Tensor:
    """uint8 [N, 3, size, size] of these images (decoded in threads, each written straight into the
    result, so no list of arrays is kept), after checking each is unchanged, and checked again after
    it is read (a file replaced meanwhile is an error, never other pixels)."""
    current = check_unchanged(rows)
    images = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)

    def decode_into(position: int) -> None:
        row = current[position]
        array = decode_image(row.full_path, size)
        if array is None:
            raise UserError(f"image {row.full_path} (id {row.id}) can no longer be decoded")
        try:
            unchanged = _stat_key(row.full_path.stat()) == _registered_stat(row)
        except OSError:
            unchanged = False
        if not unchanged:
            raise UserError(f"image {row.full_path} (id {row.id}) changed while it was read; run the command again")
        images[position] = torch.tensor(array).permute(2, 0, 1)  # a copy: the decoded array is read-only

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(decode_into, range(len(rows))))
    return images


class ImageRefused(Exception):
    """The page may not serve this file: ``status`` 404 (gone) or 409 (not the registered bytes)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def registered_bytes(row: ImageRow) -> bytes:
    """The file of a registered image, only if it is inside its images folder and holds exactly the
    registered bytes (size, then sha256 of what was read: the bytes served are the bytes checked)."""
    path = row.full_path
    try:
        real = path.resolve(strict=True)
        root = Path(row.root).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImageRefused(404, f"image {row.id} is missing") from None
    if root not in real.parents:
        raise ImageRefused(409, f"image {row.id} resolves outside its images folder")
    try:
        # O_NONBLOCK: a FIFO put in an image's place must not hang the server; only a regular file is served
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise ImageRefused(409, f"image {row.id} is not a regular file any more")
            if status.st_size != row.size:
                raise ImageRefused(409, f"image {row.id} is not the file that was registered (other size)")
            data = handle.read(row.size + 1)
    except OSError:
        raise ImageRefused(404, f"image {row.id} cannot be read") from None
    if len(data) != row.size or hashlib.sha256(data).hexdigest() != row.sha256:
        raise ImageRefused(409, f"image {row.id} is not the file that was registered (other content)")
    return data


def project_keys(rows: list[ImageRow]) -> tuple[str, ...]:
    """How an embeddings index names a project's images: their full paths."""
    return tuple(row.full_path.as_posix() for row in rows)


def project_image_size(sizes: list[tuple[int, int]], requested: int | None) -> int:
    """The square size the project's images are decoded to: ``requested``; else their common size when
    they are square and at most 64 px; else 64 (small enough to train on a CPU; set data.image_size)."""
    if requested:
        return requested
    distinct = set(sizes)
    if len(distinct) == 1:
        (width, height) = distinct.pop()
        if width == height <= 64:
            return width
    return 64
