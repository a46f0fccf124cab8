"""Exact and near duplicates among a project's images, on its backbone's cached features.

Near-duplicate pairs are found once features are computed (``compare_pending``, called by
``project.features``): the vectors not compared yet are compared with every stored vector of the
same backbone, a block against a page at a time, so the cost is paid once per image and memory
stays bounded. Exact
duplicates (the same bytes) are known from the content hashes without any features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lplgrad.project import db
from lplgrad.quality.duplicates import FLOOR, NEIGHBOURS, Pairs, near_duplicates, top_neighbours


def compare_pending(conn: Any, backbone: str, dims: int, block: int = 4096) -> None:
    """Compare every stored vector of ``backbone`` not compared yet with all stored vectors, a block
    of them against a page of the others at a time, and store the near-duplicate pairs (from
    ``FLOOR``, at most ``NEIGHBOURS`` per image) and the block's "compared" mark in one transaction:
    a kill loses nothing, and features stored before this existed are compared on their next use."""
    while pending := db.uncompared_features(conn, backbone, block):
        shas = [sha for sha, _ in pending]
        vectors = _matrix([v for _, v in pending], dims)
        found: list[tuple[int, str, float]] = []
        for page in db.feature_pages(conn, backbone):
            others = [sha for sha, _ in page]
            # one more than kept: a vector's own row in the page is among its most similar
            pairs = near_duplicates(vectors, _matrix([v for _, v in page], dims), FLOOR, per_row=NEIGHBOURS + 1)
            not_self = [
                k
                for k, (i, j) in enumerate(zip(pairs.first.tolist(), pairs.second.tolist(), strict=True))
                if shas[i] != others[j]
            ]
            kept = top_neighbours(_subset(pairs, not_self))
            found += [
                (i, others[j], s)
                for i, j, s in zip(kept.first.tolist(), kept.second.tolist(), kept.similarity.tolist(), strict=True)
            ]
        best: dict[int, list[tuple[float, str]]] = {}
        for i, other, similarity in found:  # the pages' best, merged: at most NEIGHBOURS per image
            best.setdefault(i, []).append((similarity, other))
        rows = [
            (shas[i], other, similarity)
            for i, candidates in best.items()
            for similarity, other in sorted(candidates, reverse=True)[:NEIGHBOURS]
        ]
        with db.transaction(conn):
            db.add_near_duplicates(conn, backbone, rows)
            db.mark_compared(conn, backbone, shas)


def _subset(pairs: Pairs, keep: list[int]) -> Pairs:
    index = torch.tensor(keep, dtype=torch.long)
    return Pairs(pairs.first[index], pairs.second[index], pairs.similarity[index])


def _matrix(blobs: list[bytes], dims: int) -> torch.Tensor:
    return torch.from_numpy(
        np.stack([np.frombuffer(b, dtype=np.float16, count=dims) for b in blobs]).astype(np.float32)
    )


@dataclass(frozen=True)
class Duplicates:
    """What a person should know: copies inside the pool, and test images that (nearly) duplicate a
    pool image, which inflate the measured accuracy."""

    pool_pairs: list[tuple[db.ImageRow, db.ImageRow, float]]  # similarity 1.0 for the same bytes
    leaks: list[tuple[db.ImageRow, db.ImageRow, float]]  # (test image, pool image, similarity)
    backbone: str | None  # None: only exact duplicates are known (no pretrained features)


def find_duplicates(conn: Any, backbone: str | None, threshold: float) -> Duplicates:
    """Exact duplicates by content hash, and near duplicates (cosine >= ``threshold``) recorded under ``backbone``."""
    pairs: list[tuple[db.ImageRow, db.ImageRow, float]] = []
    for group in db.duplicate_contents(conn):
        pairs += [(a, b, 1.0) for i, a in enumerate(group) for b in group[i + 1 :]]
    if backbone is not None:
        pairs += [(a, b, s) for a, b, s in db.near_duplicate_images(conn, backbone) if s >= threshold]
    pool = [(a, b, s) for a, b, s in pairs if a.role == b.role == "pool"]
    leaks = [(a, b, s) if a.role == "test" else (b, a, s) for a, b, s in pairs if {a.role, b.role} == {"pool", "test"}]
    return Duplicates(pool, leaks, backbone)


def describe(found: Duplicates, images: int, shown: int = 5) -> list[str]:
    """Lines for ``status`` and ``review``: counts, the first pairs by name, and a warning when so many
    images have a near duplicate that the backbone must be seeing different images as alike."""
    kind = "exact or near duplicates" if found.backbone else "exact duplicates (near ones need a pretrained backbone)"
    leaked = len({test.id for test, _, _ in found.leaks})
    pairs = f"{len(found.pool_pairs)} pair{'' if len(found.pool_pairs) == 1 else 's'} in the pool"
    tests = "1 test image nearly duplicates" if leaked == 1 else f"{leaked} test images nearly duplicate"
    lines = [f"{kind}: {pairs}, {tests} a pool image"]
    for test, pool, similarity in found.leaks[:shown]:
        lines.append(
            f"  test image {test.path} ~ pool image {pool.path} (cosine {similarity:.3f}): it inflates accuracy"
        )
    for a, b, similarity in found.pool_pairs[:shown]:
        lines.append(f"  {a.path} ~ {b.path} (cosine {similarity:.3f}): one batch never holds both")
    paired = {row.id for a, b, _ in found.pool_pairs for row in (a, b)}
    if images and len(paired) > MANY * images:
        lines.append(
            f"  {len(paired)} of {images} pool images have a near duplicate: the backbone sees many different images "
            "as alike here; raise active.duplicate_threshold (1.0: exact copies only)"
        )
    return lines


MANY = 0.1  # of the pool with a near duplicate: more is a sign the threshold does not suit these images
