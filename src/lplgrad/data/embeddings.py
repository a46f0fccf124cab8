"""Files of image embeddings for the strategies that cluster or cover (typiclust, probcover).

An embeddings file is a ``.npy`` array [N, D]. Its rows are the training pool's images in the
pool's order, unless an index CSV (``active.embeddings_index``, columns ``path,row``) maps each
image to a row: an image folder's images by their paths relative to the folder, a labeling
project's by their full paths. Then the array may hold the images in any order, and more images
than the pool. ``lplgrad embed`` writes both.
"""

from __future__ import annotations

import csv
import functools
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lplgrad.data import Dataset
from lplgrad.errors import UserError
from lplgrad.runtime.atomic_io import write_atomic, write_atomic_with

INDEX_COLUMNS = ["path", "row"]


def index_path(embeddings: Path) -> Path:
    """Where ``lplgrad embed`` writes the index CSV next to its ``.npy``."""
    return embeddings.with_suffix(".csv")


def write_embeddings(path: Path, features: Tensor, files: tuple[str, ...]) -> None:
    """``path`` (.npy, float32 [N, D]) and, for an image folder, its index CSV of ``files``."""
    array = features.float().numpy()
    write_atomic_with(path, lambda handle: np.save(handle, array))
    if files:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows((file, row) for row, file in enumerate(files))
        write_atomic(index_path(path), text.getvalue())


def read_index(path: str) -> dict[str, int]:
    """The index CSV: image path -> row of the embeddings array."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read embeddings index {path}: {error}") from None
    if not rows or [cell.strip() for cell in rows[0]] != INDEX_COLUMNS:
        raise UserError(f"embeddings index {path} must start with the header line 'path,row'")
    index: dict[str, int] = {}
    for line, cells in enumerate(rows[1:], start=2):
        if len(cells) != 2 or not cells[1].strip().isdigit():
            raise UserError(f"embeddings index {path} line {line}: expected 'path,row' with a row number")
        if cells[0] in index:
            raise UserError(f"embeddings index {path} line {line}: {cells[0]!r} is listed twice")
        index[cells[0]] = int(cells[1])
    return index


def _rows_of_pool(train_files: tuple[str, ...], index_file: str, available: int) -> np.ndarray:
    """For each training image, its row in the embeddings array, looked up by path."""
    if not train_files:
        raise UserError("an embeddings index maps the paths of an image folder's images; this dataset has none")
    index = read_index(index_file)
    missing = [file for file in train_files if file not in index]
    if missing:
        raise UserError(
            f"embeddings index {index_file} has no row for {len(missing)} training image(s), e.g. {missing[0]!r} "
            "(paths relative to the image folder, full paths for a project); run lplgrad embed again"
        )
    rows = np.array([index[file] for file in train_files])
    if rows.max() >= available:
        raise UserError(f"embeddings index {index_file} points to row {rows.max()}; the array has {available} rows")
    return rows


@functools.lru_cache(maxsize=2)  # read once per run, not once per round
def _load(path: str, index_file: str | None, rows: int, train_files: tuple[str, ...]) -> Tensor:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read embeddings {path}: {error}") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise UserError(f"embeddings {path} are {array.dtype} {array.shape}; expected numbers [N, D]")
    if index_file is not None:
        if train_files and len(train_files) != rows:
            raise UserError(f"this dataset names {len(train_files)} training files for {rows} images; cannot index")
        array = array[_rows_of_pool(train_files, index_file, array.shape[0])]
    elif array.shape[0] != rows:
        raise UserError(
            f"embeddings {path} have {array.shape[0]} rows; expected {rows}, one per training image in the pool's "
            "order (or give active.embeddings_index, a CSV of path,row)"
        )
    table = torch.from_numpy(np.array(array, dtype=np.float64))
    if not torch.isfinite(table).all():
        raise UserError(f"embeddings {path} hold NaN or infinite values")
    return torch.nn.functional.normalize(table, dim=1)


def load_embeddings(path: str, dataset: Dataset, index_file: str | None = None) -> Tensor:
    """L2-normalised embeddings [N, D] (float64) of the training images, in the pool's order."""
    index = str(Path(index_file).expanduser()) if index_file else None
    return _load(str(Path(path).expanduser()), index, len(dataset.train), dataset.train_files)
