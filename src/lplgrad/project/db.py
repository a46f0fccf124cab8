"""The project database: the one module that speaks SQL.

SQLite (stdlib), WAL journal, foreign keys on, one transaction per command (``BEGIN IMMEDIATE``,
so a second writer waits or fails instead of interleaving), the schema version in
``PRAGMA user_version`` with migrations applied in order on open. Images are referenced by a
path relative to one of the project's roots, never copied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError

DB_FILE = "project.db"

# MIGRATIONS[v] brings a database from version v to v + 1.
MIGRATIONS = [
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE roots (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
    CREATE TABLE classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        root_id INTEGER NOT NULL REFERENCES roots(id),
        path TEXT NOT NULL,                   -- relative to the root
        role TEXT NOT NULL CHECK (role IN ('pool', 'test')),
        size INTEGER NOT NULL,                -- bytes
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        added TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (root_id, path)
    );
    CREATE TABLE rounds (
        round INTEGER PRIMARY KEY,
        strategy TEXT NOT NULL,
        model_file TEXT,                      -- relative to the project, NULL for a cold start
        labeled INTEGER NOT NULL,             -- labeled images the model was trained on
        queried INTEGER NOT NULL,
        accuracy REAL,
        accuracy_on TEXT,                     -- 'test', 'holdout' or NULL
        train_seconds REAL,
        query_seconds REAL,
        started TEXT NOT NULL,
        finished TEXT NOT NULL
    );
    CREATE TABLE labels (
        image_id INTEGER PRIMARY KEY REFERENCES images(id),
        class_id INTEGER NOT NULL REFERENCES classes(id),
        source TEXT NOT NULL CHECK (source IN ('initial', 'csv', 'label-studio', 'web')),
        round INTEGER REFERENCES rounds(round),  -- the batch it answered, NULL for initial labels
        time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        annotator TEXT
    );
    CREATE TABLE queried (
        round INTEGER NOT NULL REFERENCES rounds(round),
        image_id INTEGER NOT NULL REFERENCES images(id),
        rank INTEGER NOT NULL,
        score REAL,
        suggested_class_id INTEGER REFERENCES classes(id),
        confidence REAL,
        PRIMARY KEY (round, image_id)
    );
    CREATE INDEX queried_image ON queried(image_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def require_project(project: Path) -> None:
    if not (project / DB_FILE).is_file():
        raise UserError(f"{project} is not an lplgrad project (no {DB_FILE}); make one with lplgrad init")


def connect(project: Path, create: bool = False) -> sqlite3.Connection:
    """Open (or, with ``create``, make) the project database, migrated to the current schema."""
    path = project / DB_FILE
    if not create:
        require_project(project)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)  # transactions are explicit
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except sqlite3.DatabaseError as error:
        conn.close()
        raise UserError(f"{path} cannot be used: {error}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations, each in its own transaction (the version is read inside it,
    so two processes opening an old database at once migrate it once)."""
    while True:
        with transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{path} was made by a newer lplgrad (schema {version}); upgrade lplgrad")
            if version == SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it is committed, or (on any exception, a kill included) none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (e.g. a full disk)
            conn.execute("ROLLBACK")
        raise


# ---- reading


@dataclass(frozen=True)
class ImageRow:
    id: int
    root: str
    path: str
    role: str
    size: int
    mtime_ns: int
    sha256: str
    label: str | None  # its class name, if labeled

    @property
    def full_path(self) -> Path:
        return Path(self.root) / self.path


_IMAGE_COLUMNS = """
    SELECT images.id, roots.path AS root, images.path, images.role, images.size, images.mtime_ns,
           images.sha256, classes.name AS label
    FROM images JOIN roots ON roots.id = images.root_id
    LEFT JOIN labels ON labels.image_id = images.id
    LEFT JOIN classes ON classes.id = labels.class_id
"""


def images(conn: sqlite3.Connection, where: str = "", params: tuple[object, ...] = ()) -> list[ImageRow]:
    rows = conn.execute(f"{_IMAGE_COLUMNS} {where} ORDER BY images.id", params).fetchall()
    return [ImageRow(**dict(row)) for row in rows]


def classes(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM classes ORDER BY id")]


def setting(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def pending_ids(conn: sqlite3.Connection) -> set[int]:
    """Images sent out in a batch and not labeled yet."""
    rows = conn.execute(
        "SELECT DISTINCT queried.image_id FROM queried LEFT JOIN labels ON labels.image_id = queried.image_id "
        "WHERE labels.image_id IS NULL"
    )
    return {row[0] for row in rows}


def last_round_of(conn: sqlite3.Connection) -> dict[int, int]:
    """image id -> the latest round that queried it."""
    return {row[0]: row[1] for row in conn.execute("SELECT image_id, MAX(round) FROM queried GROUP BY image_id")}


def last_round(conn: sqlite3.Connection, image: int) -> int | None:
    """The latest round that queried one image (None if none did)."""
    return conn.execute("SELECT MAX(round) FROM queried WHERE image_id = ?", (image,)).fetchone()[0]


def rounds(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute("SELECT * FROM rounds ORDER BY round")]


def labels_per_class(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(  # labeled pool images per class (test images are counted apart)
        "SELECT classes.name, COUNT(images.id) FROM classes "
        "LEFT JOIN labels ON labels.class_id = classes.id "
        "LEFT JOIN images ON images.id = labels.image_id AND images.role = 'pool' "
        "GROUP BY classes.id ORDER BY classes.id"
    )
    return {row[0]: row[1] for row in rows}


def queried_in(conn: sqlite3.Connection, round_index: int) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM queried WHERE round = ? ORDER BY rank", (round_index,)).fetchall()


# ---- writing (call inside ``transaction``)


def set_setting(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?", (key, value, value)
    )


def add_classes(conn: sqlite3.Connection, names: list[str]) -> None:
    conn.executemany("INSERT INTO classes (name) VALUES (?)", [(n,) for n in names])


def root_id(conn: sqlite3.Connection, root: Path) -> int:
    conn.execute("INSERT OR IGNORE INTO roots (path) VALUES (?)", (str(root),))
    return int(conn.execute("SELECT id FROM roots WHERE path = ?", (str(root),)).fetchone()[0])


def add_images(conn: sqlite3.Connection, root: int, role: str, files: list[tuple[str, int, int, str]]) -> int:
    """Register (relative path, size, mtime_ns, sha256) files under a root; ones already there are kept."""
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO images (root_id, path, role, size, mtime_ns, sha256) VALUES (?, ?, ?, ?, ?, ?)",
        [(root, path, role, size, mtime, digest) for path, size, mtime, digest in files],
    )
    return conn.total_changes - before


def image_id(conn: sqlite3.Connection, root: int, path: str) -> int:
    return int(conn.execute("SELECT id FROM images WHERE root_id = ? AND path = ?", (root, path)).fetchone()[0])


def set_labels(conn: sqlite3.Connection, rows: list[tuple[int, str, str, int | None, str | None, str | None]]) -> None:
    """(image id, class name, source, round, time or None for now, annotator) -> labels, replacing earlier ones."""
    class_ids = {name: i for i, name in conn.execute("SELECT id, name FROM classes").fetchall()}
    conn.executemany(
        "INSERT INTO labels (image_id, class_id, source, round, time, annotator) "
        "VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), ?) "
        "ON CONFLICT(image_id) DO UPDATE SET class_id = excluded.class_id, source = excluded.source, "
        "round = excluded.round, time = excluded.time, annotator = excluded.annotator",
        [(image, class_ids[name], source, round_, time, who) for image, name, source, round_, time, who in rows],
    )


def add_round(conn: sqlite3.Connection, record: dict[str, object], queried: list[tuple[object, ...]]) -> None:
    """A finished round and its queried images: (image id, rank, score, suggested class name, confidence)."""
    columns = ", ".join(record)
    conn.execute(f"INSERT INTO rounds ({columns}) VALUES ({', '.join('?' * len(record))})", tuple(record.values()))
    class_ids = {name: i for i, name in conn.execute("SELECT id, name FROM classes").fetchall()}
    conn.executemany(
        "INSERT INTO queried (round, image_id, rank, score, suggested_class_id, confidence) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (record["round"], image, rank, score, None if suggested is None else class_ids[str(suggested)], confidence)
            for image, rank, score, suggested, confidence in queried
        ],
    )


def label_of(conn: sqlite3.Connection, image: int) -> dict[str, object] | None:
    """The label row of an image (class name, source, round, time, annotator), None if unlabeled."""
    row = conn.execute(
        "SELECT classes.name AS label, labels.source, labels.round, labels.time, labels.annotator FROM labels "
        "JOIN classes ON classes.id = labels.class_id WHERE labels.image_id = ?",
        (image,),
    ).fetchone()
    return None if row is None else dict(row)


def restore_label(conn: sqlite3.Connection, image: int, previous: dict[str, object] | None) -> None:
    """Put an image's label back as it was (``label_of`` before a change); None removes it."""
    if previous is None:
        conn.execute("DELETE FROM labels WHERE image_id = ?", (image,))
        return
    set_labels(
        conn,
        [
            (
                image,
                str(previous["label"]),
                str(previous["source"]),
                previous["round"],  # type: ignore[list-item]
                previous["time"],
                previous["annotator"],
            )
        ],
    )


def queried_labels(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """(round, class name) of every queried image that is labeled: which classes each round found."""
    rows = conn.execute(
        "SELECT queried.round, classes.name FROM queried JOIN labels ON labels.image_id = queried.image_id "
        "JOIN classes ON classes.id = labels.class_id ORDER BY queried.round"
    )
    return [(row[0], row[1]) for row in rows]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Pool images, labeled pool images and test images, counted by SQLite (no rows loaded)."""
    row = conn.execute(
        "SELECT SUM(images.role = 'pool'), SUM(images.role = 'pool' AND labels.image_id IS NOT NULL), "
        "SUM(images.role = 'test') FROM images LEFT JOIN labels ON labels.image_id = images.id"
    ).fetchone()
    return {"images": row[0] or 0, "labeled": row[1] or 0, "test_images": row[2] or 0}
