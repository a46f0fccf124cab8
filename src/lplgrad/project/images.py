"""The image files of a project: finding them, fingerprinting them, and decoding a chunk of them.

Files are referenced where they are. Each is registered with its size, modification time and
sha256, and checked against them before it is decoded, so a file that changed or vanished is an
error that names it, never a silently different pixel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def fingerprint(path: Path) -> tuple[int, int, str]:
    """(size in bytes, mtime in ns, sha256 hex) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, digest.hexdigest()


def register(root: Path, paths: list[Path]) -> tuple[list[tuple[str, int, int, str]], list[str], list[tuple[int, int]]]:
    """Fingerprint decodable files (in threads): ([(relative path, size, mtime, sha256)], undecodable
    relative paths, [(width, height)] of the decodable ones)."""
    with ThreadPoolExecutor(WORKERS) as pool:
        sizes = list(pool.map(header_size, paths))
        good = [p for p, s in zip(paths, sizes, strict=True) if s is not None]
        prints = list(pool.map(fingerprint, good))
    files = [(p.relative_to(root).as_posix(), *f) for p, f in zip(good, prints, strict=True)]
    bad = [p.relative_to(root).as_posix() for p, s in zip(paths, sizes, strict=True) if s is None]
    return files, bad, [s for s in sizes if s is not None]


def check_unchanged(rows: list[ImageRow]) -> None:
    """Every file still there with the size and modification time it was registered with."""
    for row in rows:
        try:
            stat = row.full_path.stat()
        except OSError:
            raise UserError(f"image {row.full_path} (id {row.id}) is missing; put it back or re-register it") from None
        if (stat.st_size, stat.st_mtime_ns) != (row.size, row.mtime_ns):
            raise UserError(
                f"image {row.full_path} (id {row.id}) changed since it was registered; "
                "restore it, or add the new version with lplgrad add"
            )


def decode(rows: list[ImageRow], size: int) -> Tensor:
    """uint8 [N, 3, size, size] of these images (decoded in threads, each written straight into the
    result, so no list of arrays is kept), after checking each is unchanged."""
    check_unchanged(rows)
    images = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)

    def decode_into(position: int) -> None:
        row = rows[position]
        array = decode_image(row.full_path, size)
        if array is None:
            raise UserError(f"image {row.full_path} (id {row.id}) can no longer be decoded")
        images[position] = torch.tensor(array).permute(2, 0, 1)  # a copy: the decoded array is read-only

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(decode_into, range(len(rows))))
    return images


def project_keys(rows: list[ImageRow]) -> tuple[str, ...]:
    """How an embeddings index names a project's images: their full paths."""
    return tuple(row.full_path.as_posix() for row in rows)


def stream(rows: list[ImageRow], size: int, chunk: int = CHUNK) -> Iterator[tuple[list[ImageRow], Tensor]]:
    """(rows, images) a chunk at a time, so memory is bounded by the chunk, not by the pool."""
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        yield part, decode(part, size)


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
