"""Decoding a folder of class subfolders into uint8 tensors, once, with an on-disk cache.

Layout: ``ROOT/<class>/<image>`` (one pool, split later by a stratified
holdout) or ``ROOT/train/<class>/...`` plus ``ROOT/test/<class>/...``.
Decoding is per image (Pillow, in a thread pool) but happens only the first
time: the tensors are saved under the cache directory, keyed by every file's
relative path, size and modification time and by the requested image size, so
the second run starts in seconds and any change to the folder invalidates it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from lplgrad.errors import UserError
from lplgrad.runtime.atomic_io import StorageError, save_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_MIXED_SIZE = 224  # ImageNet resolution, used when a folder's images differ in size


@dataclass(frozen=True)
class FolderImages:
    """Decoded images uint8 [N, 3, H, W], labels int64 [N], class names, and files that failed to decode."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    skipped: list[str]
    files: list[str]  # the decoded images' paths relative to the folder, in row order (POSIX separators)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LPLGRAD_CACHE", Path.home() / ".cache" / "lplgrad"))


def _is_hidden(path: Path, root: Path) -> bool:
    """A name starting with "." anywhere below ``root`` (macOS ``._x.jpg``, ``.git``, ``...``)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _loops_back(folder: Path, root: Path) -> bool:
    """A folder (a symlink, typically) that is ``root`` itself or one of its ancestors: scanning it
    would count every image again, under a new class."""
    real, real_root = folder.resolve(), root.resolve()
    return real == real_root or real in real_root.parents


def scan(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``root/<class>/`` (sorted), their class index, and the class names.

    Hidden entries (names starting with ".") are skipped, folders and files alike; a class folder
    that leads back to the root is skipped; a file reached twice (through a symlink) counts once,
    in the first class (by sorted name) that reaches it. Each kind of skip is logged with a count.
    """
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a directory")
    entries = sorted(root.iterdir())
    hidden = [d.name for d in entries if d.name.startswith(".")]
    looping = [d.name for d in entries if not d.name.startswith(".") and d.is_dir() and _loops_back(d, root)]
    found = [d.name for d in entries if d.is_dir() and d.name not in hidden and d.name not in looping]
    if hidden:
        log.warning("%s: skipped hidden entries %s", root, ", ".join(map(repr, hidden[:5])))
    if looping:
        log.warning("%s: skipped folder(s) that lead back to the folder itself: %s", root, ", ".join(looping))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(f"{root} has classes the training split lacks: {', '.join(unknown)}")
    paths: list[Path] = []
    labels: list[int] = []
    seen: set[Path] = set()
    skipped = Counter[str]()
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            if _is_hidden(path, folder):
                skipped["hidden"] += 1
                continue
            real = path.resolve()
            if real in seen:
                skipped["reached twice through a symlink"] += 1
                continue
            seen.add(real)
            paths.append(path)
            labels.append(label)
    for why, count in skipped.items():
        log.warning("%s: skipped %d image file(s): %s", root, count, why)
    if not paths:
        raise UserError(f"no images found in {root} (expected {root}/<class>/<image>.jpg|png|...)")
    return paths, labels, classes


def _cache_key(paths: list[Path], root: Path, size: int, classes: list[str]) -> str:
    # The class list decides each file's label index (a test folder takes the training folder's list).
    digest = hashlib.sha256(f"v1 size={size} classes={classes!r}".encode())
    for path in paths:
        stat = path.stat()
        # fsencode: a file name need not be valid UTF-8 (its bytes are kept as surrogates)
        digest.update(os.fsencode(path.relative_to(root)) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] from any mode: 16-bit and float grayscale are rescaled (convert("RGB") would
    clip them to white), CMYK, palette, grayscale and alpha images are converted (alpha dropped)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        peak = values.max(initial=0.0)
        if img.mode == "F" and peak <= 1.0:
            scale = 255.0  # float images in [0, 1]
        elif img.mode.startswith("I;16") or peak > 255:
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
        gray = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(path: Path, size: int) -> np.ndarray | None:
    """One image as uint8 [H, W, 3] resized to size x size (0 = keep); None if it cannot be decoded
    (truncated or corrupt data, a non-image file, an empty file, a decompression bomb)."""
    try:
        with Image.open(path) as img:
            if size:
                img.draft("RGB", (size, size))  # JPEG: decode big photos at a reduced scale, much faster
            img.load()
            rgb = Image.fromarray(_to_rgb(img))
            if size and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        log.debug("cannot decode %s: %s", path, error)
        return None


def choose_size(paths: list[Path], requested: int | None, workers: int) -> int:
    """The square size to decode to: ``requested`` if set, else the common size (0: keep), else 224."""
    if requested:
        return requested
    with ThreadPoolExecutor(workers) as pool:
        sizes = Counter(s for s in pool.map(header_size, paths) if s is not None)
    if len(sizes) == 1:
        (width, height), _ = sizes.most_common(1)[0]
        if width == height:
            return 0  # keep native size
    log.info("images differ in size; resizing all to %dx%d (set data.image_size to change)", *(DEFAULT_MIXED_SIZE,) * 2)
    return DEFAULT_MIXED_SIZE


def decode_folder(
    root: Path,
    classes: list[str] | None = None,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> FolderImages:
    """Decode ``root/<class>/*`` into tensors, reading the cache when the folder is unchanged."""
    paths, labels, classes = scan(root, classes)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    cache_dir = cache_dir or default_cache_dir()
    # Keyed by the requested size, so a cache hit needs no image header reads at all.
    cache_file = cache_dir / f"folder-{_cache_key(paths, root, image_size or 0, classes)}.pt"  # 0: native, as in 0.1
    cached = _read_cache(cache_file, paths, root)
    if cached is not None:
        kept = set(cached["files"])  # the skipped files as this run spells them, not as the cache's run did
        skipped = [str(path) for path in paths if path.relative_to(root).as_posix() not in kept]
        return FolderImages(cached["images"], cached["labels"], classes, skipped, cached["files"])

    size = choose_size(paths, image_size, workers)
    log.info("decoding %d images under %s (once; cached afterwards)", len(paths), root)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, size), paths))
    keep = [i for i, a in enumerate(arrays) if a is not None]
    decoded = [a for a in arrays if a is not None]
    skipped = [str(paths[i]) for i, a in enumerate(arrays) if a is None]
    if skipped:
        log.warning("skipped %d unreadable image file(s) under %s", len(skipped), root)
    if not keep:
        raise UserError(f"none of the {len(paths)} image files under {root} could be decoded")
    shapes = Counter(a.shape for a in decoded)
    if len(shapes) > 1:
        raise UserError(f"images under {root} differ in size {sorted(shapes)[:3]}; set data.image_size")
    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
    files = [paths[i].relative_to(root).as_posix() for i in keep]  # one per image row
    label_tensor = torch.tensor([labels[i] for i in keep], dtype=torch.long)
    empty = [classes[c] for c in range(len(classes)) if not (label_tensor == c).any()]
    if empty:
        log.warning("class folder(s) with no readable image: %s", ", ".join(empty))
    try:  # a unique temporary name and a rename: two runs decoding this folder at once never collide
        save_atomic(cache_file, {"images": images, "labels": label_tensor, "skipped": skipped, "files": files})
    except StorageError as error:
        log.warning("the decoded images are not cached (%s); the next run decodes them again", error.strerror)
    return FolderImages(images, label_tensor, classes, skipped, files)


def _read_cache(cache_file: Path, paths: list[Path], root: Path) -> dict[str, Any] | None:
    """The cached decode of ``paths``, with ``files`` (one relative path per image row), or None to
    decode again: no cache, or a cache written before ``files`` was kept that skipped some images
    (its skipped paths are spelled with the root of that run, so they cannot be matched safely)."""
    if not cache_file.exists():
        return None
    cached = torch.load(cache_file, weights_only=True)
    if "files" not in cached:
        if cached["skipped"]:
            return None
        cached["files"] = [path.relative_to(root).as_posix() for path in paths]
    if len(cached["files"]) != len(cached["labels"]):
        return None
    log.info("loaded %d decoded images of %s from cache %s", len(cached["labels"]), root, cache_file)
    return dict(cached)
