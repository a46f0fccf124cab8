"""The project database: the one module that speaks SQL.

SQLite (stdlib), WAL journal, foreign keys on, one transaction per command (``BEGIN IMMEDIATE``,
so a second writer waits or fails instead of interleaving), the schema version in
``PRAGMA user_version`` with migrations applied in order on open. Images are referenced by a
path relative to one of the project's roots, never copied.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lplgrad.core.records import QUALITY_FIELDS, Measured
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
    """
    -- The kernel sets ctime on every change of a file's content or mtime and nothing sets it back,
    -- so an unchanged (size, mtime, ctime) means unchanged bytes. NULL (older projects): hash once.
    ALTER TABLE images ADD COLUMN ctime_ns INTEGER;
    ALTER TABLE rounds ADD COLUMN per_class_accuracy TEXT;  -- JSON list in class order, null where a class is absent
    ALTER TABLE rounds ADD COLUMN steps INTEGER;  -- optimizer steps trained (core.records.Measured)
    ALTER TABLE rounds ADD COLUMN epochs INTEGER;
    ALTER TABLE rounds ADD COLUMN candidates INTEGER;  -- unlabeled images scored
    -- Images the page skipped in a round's batch: shown after the others until the next round.
    CREATE TABLE skipped (
        image_id INTEGER PRIMARY KEY REFERENCES images(id),
        round INTEGER NOT NULL REFERENCES rounds(round)
    );
    -- A frozen backbone's pooled features of an image's bytes (train.finetune = head), float16,
    -- keyed by the backbone (name, weights, input size) and the content hash: never stale, never
    -- mixed across backbones, written a chunk per transaction (a kill keeps the finished chunks).
    CREATE TABLE features (
        backbone TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (backbone, sha256)
    );
    """,
    """
    -- Stopping and calibration (core.records.Measured): the accuracy's Wilson interval, expected
    -- calibration error, the fitted temperature, reliability bins, the stop set's kappa and uncertainty.
    ALTER TABLE rounds ADD COLUMN accuracy_low REAL;
    ALTER TABLE rounds ADD COLUMN accuracy_high REAL;
    ALTER TABLE rounds ADD COLUMN ece REAL;
    ALTER TABLE rounds ADD COLUMN temperature REAL;
    ALTER TABLE rounds ADD COLUMN reliability TEXT;  -- JSON [[images, mean confidence, accuracy], ...]
    ALTER TABLE rounds ADD COLUMN stop_kappa REAL;
    ALTER TABLE rounds ADD COLUMN stop_uncertainty REAL;
    -- Each round's predicted class of its stop-set images: the next round's kappa compares with them.
    CREATE TABLE stop_predictions (
        round INTEGER NOT NULL REFERENCES rounds(round),
        image_id INTEGER NOT NULL REFERENCES images(id),
        class_id INTEGER NOT NULL REFERENCES classes(id),
        PRIMARY KEY (round, image_id)
    );
    -- Whether a stored vector was compared with the others for near duplicates (0: not yet, e.g.
    -- features stored before this version, or a comparison a kill interrupted: it runs again).
    ALTER TABLE features ADD COLUMN compared INTEGER NOT NULL DEFAULT 0;
    -- Pairs of image contents whose features under a backbone are near duplicates (cosine >= the
    -- threshold, quality.duplicates), found when the features are computed, first_sha < second_sha.
    CREATE TABLE near_duplicates (
        backbone TEXT NOT NULL,
        first_sha TEXT NOT NULL,
        second_sha TEXT NOT NULL,
        similarity REAL NOT NULL,
        PRIMARY KEY (backbone, first_sha, second_sha)
    );
    -- The doubtful answers each ``lplgrad review`` listed, and what the model suggested instead.
    CREATE TABLE review (
        batch INTEGER NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id),
        rank INTEGER NOT NULL,
        given_class_id INTEGER NOT NULL REFERENCES classes(id),
        suggested_class_id INTEGER NOT NULL REFERENCES classes(id),
        self_confidence REAL NOT NULL,  -- the out-of-sample probability of the given label
        decision TEXT CHECK (decision IN ('kept', 'relabeled')),  -- NULL until the page or an import decides
        PRIMARY KEY (batch, image_id)
    );
    -- Relabeled answers (lplgrad review): what the label was before, so nothing is lost.
    CREATE TABLE relabeled (
        image_id INTEGER NOT NULL REFERENCES images(id),
        old_class_id INTEGER NOT NULL REFERENCES classes(id),
        old_source TEXT NOT NULL,
        new_class_id INTEGER NOT NULL REFERENCES classes(id),
        time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def require_project(project: Path) -> None:
    path = project / DB_FILE
    if not path.is_file():
        raise UserError(f"{project} is not an lplgrad project (no {DB_FILE}); make one with lplgrad init")
    if path.stat().st_size == 0:
        raise UserError(
            f"{path} is empty (0 bytes): not an lplgrad project, or a damaged one; restore it from a backup"
        )


def connect(project: Path, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """Open (or, with ``create``, make) the project database, migrated to the current schema.

    ``readonly`` connections (status, export, the page's reads) never write: they also open a project
    on a read-only disk or folder. Migrations run only when the schema is old, so an ordinary open
    takes no write lock. A file that is not an SQLite database, or is damaged, is a UserError."""
    path = project / DB_FILE
    if not create:
        require_project(project)
    try:
        conn = _open(path, readonly)
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path} cannot be opened: {error}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if not create and version == 0:
            raise UserError(f"{path} is not an lplgrad project database (no schema); restore it from a backup")
        if version > SCHEMA_VERSION:
            raise UserError(f"{path} was made by a newer lplgrad (schema {version}); upgrade lplgrad")
        if version < SCHEMA_VERSION:
            if readonly:  # a read-only handle cannot migrate: do it once with a writable one
                conn.close()
                connect(project, create).close()
                return connect(project, readonly=True)
            conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn, path)
    except sqlite3.DatabaseError as error:
        conn.close()
        raise UserError(f"{path} cannot be used: {damage_hint(error)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection with foreign keys on and explicit transactions. Read-only: ``mode=ro``, and where
    even that cannot open (a WAL database in a read-only folder, whose shared-memory file cannot be
    made) ``immutable=1``, which reads the file as it is."""
    if not readonly:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    else:
        uri = "file:" + quote(str(path.resolve()))
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=10.0, isolation_level=None)
        try:
            conn.execute("PRAGMA user_version").fetchone()  # opening is lazy: this is where it fails
        except sqlite3.OperationalError:
            conn.close()
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:  # immutable would not read the committed WAL
                raise UserError(
                    f"{path} cannot be read here: its last changes are still in {wal.name}, which this "
                    "read-only folder keeps SQLite from merging; open the project once where it is writable"
                ) from None
            conn = sqlite3.connect(uri + "?immutable=1", uri=True, timeout=10.0, isolation_level=None)
        except BaseException:
            conn.close()
            raise
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def damage_hint(error: sqlite3.DatabaseError) -> str:
    """SQLite's message, with what to do when it means a damaged file or a full disk."""
    text = str(error)
    if "malformed" in text or "not a database" in text:
        return f"{text}: the file is damaged; restore project.db from a backup"
    if "disk is full" in text or "disk I/O" in text:
        return f"{text}: free some space and run the command again (nothing was changed)"
    if "readonly" in text or "read-only" in text:
        return f"{text}: the project is read-only here; only status, export and predict work on it"
    return text


def check_integrity(conn: sqlite3.Connection, project: Path) -> None:
    """``PRAGMA quick_check``: a page overwritten with garbage is found here, not by a later write."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as error:
        problems = [str(error)]
    if problems != ["ok"]:
        raise UserError(f"{project / DB_FILE} is damaged ({'; '.join(problems)[:200]}); restore it from a backup")


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


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: every read inside sees the database at one moment (a round committed
    meanwhile shows in the next one, never half)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


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
    ctime_ns: int | None = None  # None: registered by an lplgrad that did not record it

    @property
    def full_path(self) -> Path:
        return Path(self.root) / self.path


_IMAGE_COLUMNS = """
    SELECT images.id, roots.path AS root, images.path, images.role, images.size, images.mtime_ns,
           images.sha256, classes.name AS label, images.ctime_ns
    FROM images JOIN roots ON roots.id = images.root_id
    LEFT JOIN labels ON labels.image_id = images.id
    LEFT JOIN classes ON classes.id = labels.class_id
"""


def _images(conn: sqlite3.Connection, where: str = "", params: tuple[object, ...] = ()) -> list[ImageRow]:
    rows = conn.execute(f"{_IMAGE_COLUMNS} {where} ORDER BY images.id", params).fetchall()
    return [ImageRow(**dict(row)) for row in rows]


def images(conn: sqlite3.Connection) -> list[ImageRow]:
    """Every registered image, by id."""
    return _images(conn)


def pool_images(conn: sqlite3.Connection) -> list[ImageRow]:
    return _images(conn, "WHERE images.role = 'pool'")


def labeled_test_images(conn: sqlite3.Connection) -> list[ImageRow]:
    return _images(conn, "WHERE images.role = 'test' AND labels.image_id IS NOT NULL")


def image(conn: sqlite3.Connection, image_id: int, role: str | None = None) -> ImageRow | None:
    """One image by id (of ``role``, when given), None if there is none."""
    rows = _images(conn, "WHERE images.id = ? AND images.role = COALESCE(?, images.role)", (image_id, role))
    return rows[0] if rows else None


@dataclass(frozen=True)
class QueriedImage:
    """An image some round's batch holds, with what the model said of it then."""

    round: int
    rank: int
    image: ImageRow
    suggested: str | None
    confidence: float | None


def queried_images(conn: sqlite3.Connection) -> list[QueriedImage]:
    """Every batch's images, by round and rank."""
    rows = {row.id: row for row in _images(conn, "WHERE images.id IN (SELECT image_id FROM queried)")}
    names = dict(conn.execute("SELECT id, name FROM classes").fetchall())
    return [
        QueriedImage(q["round"], q["rank"], rows[q["image_id"]], names.get(q["suggested_class_id"]), q["confidence"])
        for q in conn.execute("SELECT * FROM queried ORDER BY round, rank")
    ]


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


def temperature_of(conn: sqlite3.Connection, model_file: str) -> float:
    """The temperature fitted in the round that wrote ``model_file`` (1.0 if none was fitted)."""
    row = conn.execute("SELECT temperature FROM rounds WHERE model_file = ?", (model_file,)).fetchone()
    return float(row[0]) if row is not None and row[0] is not None else 1.0


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


def exported_labels(conn: sqlite3.Connection) -> list[tuple[str, str, str, int | None, str]]:
    """(full path, class name, source, round, role) of every labeled image, by id."""
    rows = conn.execute(
        "SELECT roots.path || '/' || images.path, classes.name, labels.source, labels.round, images.role "
        "FROM labels JOIN images ON images.id = labels.image_id JOIN roots ON roots.id = images.root_id "
        "JOIN classes ON classes.id = labels.class_id ORDER BY images.id"
    )
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


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


def add_images(conn: sqlite3.Connection, root: int, role: str, files: list[tuple[str, int, int, int, str]]) -> int:
    """Register (relative path, size, mtime_ns, ctime_ns, sha256) files under a root; ones already there are kept."""
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO images (root_id, path, role, size, mtime_ns, ctime_ns, sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(root, path, role, size, mtime, ctime, digest) for path, size, mtime, ctime, digest in files],
    )
    return conn.total_changes - before


def update_fingerprints(conn: sqlite3.Connection, prints: list[tuple[int, int, int, int, str]]) -> None:
    """(image id, size, mtime_ns, ctime_ns, sha256): the file's fingerprint now (same bytes, or accepted ones)."""
    conn.executemany(
        "UPDATE images SET size = ?, mtime_ns = ?, ctime_ns = ?, sha256 = ? WHERE id = ?",
        [(size, mtime, ctime, digest, image) for image, size, mtime, ctime, digest in prints],
    )


def roots(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """Each registered root folder and the roles of the images under it."""
    found: dict[str, set[str]] = {}
    for path, role in conn.execute(
        "SELECT roots.path, images.role FROM roots LEFT JOIN images ON images.root_id = roots.id "
        "GROUP BY roots.id, images.role"
    ):
        found.setdefault(path, set()).update([role] if role else [])
    return found


def duplicate_contents(conn: sqlite3.Connection) -> list[list[ImageRow]]:
    """Groups of registered images with the same sha256 (copies, hard links, symlinks of one file)."""
    rows = _images(conn, "WHERE images.sha256 IN (SELECT sha256 FROM images GROUP BY sha256 HAVING COUNT(*) > 1)")
    groups: dict[str, list[ImageRow]] = {}
    for row in rows:
        groups.setdefault(row.sha256, []).append(row)
    return list(groups.values())


def image_id(conn: sqlite3.Connection, root: int, path: str) -> int:
    return int(conn.execute("SELECT id FROM images WHERE root_id = ? AND path = ?", (root, path)).fetchone()[0])


def now() -> str:
    """The time stamp labels carry (UTC, ISO 8601 with milliseconds, as SQLite's default writes it)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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


def cached_features(conn: sqlite3.Connection, backbone: str, hashes: list[str]) -> dict[str, bytes]:
    """The stored feature vectors (float16 bytes) of these content hashes under ``backbone``."""
    return dict(stored_features(conn, backbone, hashes))


def stored_features(conn: sqlite3.Connection, backbone: str, hashes: list[str]) -> Iterator[tuple[str, bytes]]:
    """(sha256, float16 bytes) of those of these hashes stored under ``backbone``, 900 at a time."""
    unique = sorted(set(hashes))
    for start in range(0, len(unique), 900):  # SQLite's limit on bound parameters
        part = unique[start : start + 900]
        marks = ", ".join("?" * len(part))
        rows = conn.execute(
            f"SELECT sha256, vector FROM features WHERE backbone = ? AND sha256 IN ({marks})", (backbone, *part)
        )
        yield from ((row[0], bytes(row[1])) for row in rows.fetchall())


def add_features(conn: sqlite3.Connection, backbone: str, vectors: list[tuple[str, bytes]]) -> None:
    """(sha256, float16 bytes) of one chunk; call inside ``transaction``."""
    conn.executemany(
        "INSERT OR REPLACE INTO features (backbone, sha256, vector) VALUES (?, ?, ?)",
        [(backbone, digest, vector) for digest, vector in vectors],
    )


def feature_pages(conn: sqlite3.Connection, backbone: str, page: int = 4096) -> Iterator[list[tuple[str, bytes]]]:
    """Every stored (sha256, vector) of ``backbone``, ``page`` at a time (memory bounded by a page)."""
    last = ""
    while True:
        rows = conn.execute(
            "SELECT sha256, vector FROM features WHERE backbone = ? AND sha256 > ? ORDER BY sha256 LIMIT ?",
            (backbone, last, page),
        ).fetchall()
        if not rows:
            return
        yield [(row[0], bytes(row[1])) for row in rows]
        last = rows[-1][0]


def uncompared_features(conn: sqlite3.Connection, backbone: str, limit: int) -> list[tuple[str, bytes]]:
    """Up to ``limit`` stored (sha256, vector) of ``backbone`` not yet compared for near duplicates."""
    rows = conn.execute(
        "SELECT sha256, vector FROM features WHERE backbone = ? AND compared = 0 ORDER BY sha256 LIMIT ?",
        (backbone, limit),
    ).fetchall()
    return [(row[0], bytes(row[1])) for row in rows]


def mark_compared(conn: sqlite3.Connection, backbone: str, hashes: list[str]) -> None:
    conn.executemany(
        "UPDATE features SET compared = 1 WHERE backbone = ? AND sha256 = ?", [(backbone, h) for h in hashes]
    )


def feature_backbones(conn: sqlite3.Connection) -> list[str]:
    """The backbone keys features are stored under."""
    return [row[0] for row in conn.execute("SELECT DISTINCT backbone FROM features")]


def add_near_duplicates(conn: sqlite3.Connection, backbone: str, pairs: list[tuple[str, str, float]]) -> None:
    """(sha256, sha256, cosine similarity) pairs, in either order; call inside ``transaction``."""
    conn.executemany(
        "INSERT OR IGNORE INTO near_duplicates (backbone, first_sha, second_sha, similarity) VALUES (?, ?, ?, ?)",
        [(backbone, min(a, b), max(a, b), similarity) for a, b, similarity in pairs if a != b],
    )


def near_duplicate_images(conn: sqlite3.Connection, backbone: str) -> list[tuple[ImageRow, ImageRow, float]]:
    """Registered images whose contents are near duplicates under ``backbone``, most similar first
    (every image of each content: copies of one file appear under each of their paths)."""
    by_sha: dict[str, list[ImageRow]] = {}
    for row in images(conn):
        by_sha.setdefault(row.sha256, []).append(row)
    pairs = conn.execute(
        "SELECT first_sha, second_sha, similarity FROM near_duplicates WHERE backbone = ? ORDER BY similarity DESC",
        (backbone,),
    )
    return [
        (a, b, float(sim))
        for first, second, sim in pairs
        for a in by_sha.get(first, [])
        for b in by_sha.get(second, [])
    ]


def add_review(conn: sqlite3.Connection, batch: int, items: list[tuple[int, int, str, str, float]]) -> None:
    """A review batch: (image id, rank, given class, suggested class, self-confidence)."""
    class_ids = {name: i for i, name in conn.execute("SELECT id, name FROM classes").fetchall()}
    conn.executemany(
        "INSERT INTO review (batch, image_id, rank, given_class_id, suggested_class_id, self_confidence) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(batch, image, rank, class_ids[given], class_ids[suggested], p) for image, rank, given, suggested, p in items],
    )


def last_review(conn: sqlite3.Connection) -> int:
    """The number of the latest review batch, 0 if none."""
    return int(conn.execute("SELECT COALESCE(MAX(batch), 0) FROM review").fetchone()[0])


@dataclass(frozen=True)
class ReviewItem:
    batch: int
    rank: int
    image: ImageRow  # its label now (``image.label``) may differ from ``given`` once relabeled
    given: str
    suggested: str
    self_confidence: float
    decision: str | None  # None: not decided yet


def decide_review(conn: sqlite3.Connection, batch: int, image: int, decision: str) -> None:
    conn.execute("UPDATE review SET decision = ? WHERE batch = ? AND image_id = ?", (decision, batch, image))


def review_items(conn: sqlite3.Connection, batch: int) -> list[ReviewItem]:
    names = dict(conn.execute("SELECT id, name FROM classes").fetchall())
    rows = {
        row.id: row
        for row in _images(conn, "WHERE images.id IN (SELECT image_id FROM review WHERE batch = ?)", (batch,))
    }
    return [
        ReviewItem(
            batch,
            r["rank"],
            rows[r["image_id"]],
            names[r["given_class_id"]],
            names[r["suggested_class_id"]],
            r["self_confidence"],
            r["decision"],
        )
        for r in conn.execute("SELECT * FROM review WHERE batch = ? ORDER BY rank", (batch,))
    ]


def decide_latest_review(conn: sqlite3.Connection, kept: list[int], relabeled: list[int]) -> None:
    """Mark the undecided answers of the latest review batch that an import confirmed or changed."""
    batch = last_review(conn)
    for decision, ids in (("kept", kept), ("relabeled", relabeled)):
        conn.executemany(
            "UPDATE review SET decision = ? WHERE batch = ? AND image_id = ? AND decision IS NULL",
            [(decision, batch, image) for image in ids],
        )


def log_relabels(conn: sqlite3.Connection, changes: list[tuple[int, str]]) -> None:
    """Keep the current label of each (image id, new class name) in ``relabeled`` before it is
    changed; call inside the transaction that changes it."""
    conn.executemany(
        "INSERT INTO relabeled (image_id, old_class_id, old_source, new_class_id) "
        "SELECT labels.image_id, labels.class_id, labels.source, (SELECT id FROM classes WHERE name = ?) "
        "FROM labels WHERE labels.image_id = ?",
        [(new, image) for image, new in changes],
    )


def skip(conn: sqlite3.Connection, image: int, round_index: int) -> None:
    """The page skipped an image of ``round_index``'s batch: it goes last until a newer round."""
    conn.execute(
        "INSERT INTO skipped (image_id, round) VALUES (?, ?) ON CONFLICT(image_id) DO UPDATE SET round = ?",
        (image, round_index, round_index),
    )


def skipped_in(conn: sqlite3.Connection, round_index: int) -> set[int]:
    return {row[0] for row in conn.execute("SELECT image_id FROM skipped WHERE round = ?", (round_index,))}


@dataclass(frozen=True)
class RoundRow:
    """A finished round of a labeling project: what was done, and what it measured (``Measured``,
    the fields an experiment's results row has too; None for a cold start, which trains nothing)."""

    round: int
    strategy: str
    model_file: str | None  # relative to the project
    labeled: int  # labeled pool images the round read (held-out ones included)
    queried: int
    accuracy_on: str | None  # "test", "holdout" or None
    started: str
    finished: str
    measured: Measured | None = None


def add_round(
    conn: sqlite3.Connection,
    record: RoundRow,
    queried: list[tuple[object, ...]],
    stop_predictions: Sequence[tuple[int, int]] = (),
) -> None:
    """A finished round, its queried images (image id, rank, score, suggested class name,
    confidence) and its stop set's predictions (image id, class index in ``classes`` order)."""
    m = record.measured
    values = {
        "round": record.round,
        "strategy": record.strategy,
        "model_file": record.model_file,
        "labeled": record.labeled,
        "queried": record.queried,
        "accuracy_on": record.accuracy_on if m is not None and m.accuracy is not None else None,
        "started": record.started,
        "finished": record.finished,
        "accuracy": None if m is None else m.accuracy,
        "per_class_accuracy": None if m is None or m.per_class_accuracy is None else json.dumps(m.per_class_accuracy),
        "train_seconds": 0.0 if m is None else m.train_seconds,
        "query_seconds": 0.0 if m is None else m.query_seconds,
        "steps": None if m is None else m.steps,
        "epochs": None if m is None else m.epochs,
        "candidates": None if m is None else m.candidates,
        **{name: None for name in QUALITY_FIELDS},
        **({} if m is None else m.quality()),
    }
    if values["reliability"] is not None:
        values["reliability"] = json.dumps(values["reliability"])
    columns = ", ".join(values)  # the names above, never input
    conn.execute(f"INSERT INTO rounds ({columns}) VALUES ({', '.join('?' * len(values))})", tuple(values.values()))
    class_ids = {name: i for i, name in conn.execute("SELECT id, name FROM classes").fetchall()}
    conn.executemany(
        "INSERT INTO queried (round, image_id, rank, score, suggested_class_id, confidence) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (record.round, image, rank, score, None if suggested is None else class_ids[str(suggested)], confidence)
            for image, rank, score, suggested, confidence in queried
        ],
    )
    ordered = [class_id for (class_id,) in conn.execute("SELECT id FROM classes ORDER BY id")]
    conn.executemany(
        "INSERT INTO stop_predictions (round, image_id, class_id) VALUES (?, ?, ?)",
        [(record.round, image, ordered[predicted]) for image, predicted in stop_predictions],
    )


def stop_predictions(conn: sqlite3.Connection, round_index: int) -> dict[int, int]:
    """image id -> predicted class index (in ``classes`` order) of round ``round_index``'s stop set."""
    index = {class_id: i for i, (class_id,) in enumerate(conn.execute("SELECT id FROM classes ORDER BY id"))}
    rows = conn.execute("SELECT image_id, class_id FROM stop_predictions WHERE round = ?", (round_index,))
    return {image: index[class_id] for image, class_id in rows}


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
