"""Crash-safe state of a run folder, so a killed run resumes exactly where it stopped.

After each finished round of a (strategy, trial), ``run_folder.RunFolderRecorder`` replaces
DIR/checkpoints/<strategy>-trial<t>.pt atomically (temporary file in the same folder, fsync,
rename) with: the round just finished, the pool's ``labeled_at`` after that round's query,
the weights of w_main and w_aux (for warm starts; dropped once the last round is done) and
every results row of that (strategy, trial) so far. The row is appended to results.jsonl only
after the checkpoint exists, so a kill between the two loses nothing, and a results file that
was deleted or damaged is rebuilt from the checkpoints on ``--resume``.

The file is a header line ``lplgrad-checkpoint sha256=<hex>`` followed by torch.save's bytes;
the checksum is verified on load, so a damaged checkpoint is an error, never a silently wrong
round. Files written before checksums existed (torch.save's bytes alone) still load.

No random-number-generator state is needed: every random draw of a round comes from a
generator seeded by (run seed, trial, round, purpose), see ``core.seeds``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from lplgrad.config.compat import upgrade_checkpoint
from lplgrad.errors import UserError
from lplgrad.experiment.results import RESULTS_FILE, read_results, row_line
from lplgrad.runtime.atomic_io import serialize, write_atomic, write_atomic_with

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
HEADER = b"lplgrad-checkpoint sha256="
ZIP_MAGIC = b"PK"  # torch.save's format, the whole file before checksums were added
REJECTED_FILE = "results.rejected.txt"  # lines of results.jsonl that were not rows, kept for the user


def checkpoint_path(out_dir: Path, strategy: str, trial: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"{strategy}-trial{trial}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``save_atomic`` with the sha256 header that ``load_checkpoint`` verifies."""
    payload = serialize(state)
    header = HEADER + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n"
    write_atomic_with(path, lambda handle: handle.write(header + payload))


class DamagedCheckpoint(UserError):
    """A checkpoint whose bytes do not match its checksum, or that torch cannot read."""

    def __init__(self, path: Path, strategy: str, trial: int, why: str) -> None:
        super().__init__(
            f"checkpoint {path} is damaged ({why}); delete it and rerun with --resume to run "
            f"{strategy} trial {trial} again from its start (its rows in {RESULTS_FILE} are replaced)"
        )


def load_checkpoint(out_dir: Path, strategy: str, trial: int) -> dict[str, Any] | None:
    """The verified state of one (strategy, trial), None if it has none; ``rows`` always present."""
    path = checkpoint_path(out_dir, strategy, trial)
    if not path.exists():
        return None
    data = path.read_bytes()
    if data.startswith(HEADER):
        header, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode("ascii") != header[len(HEADER) :]:
            raise DamagedCheckpoint(path, strategy, trial, "checksum mismatch")
    elif data.startswith(ZIP_MAGIC):
        payload = data  # written before checksums: nothing to verify against
    else:
        raise DamagedCheckpoint(path, strategy, trial, "not a checkpoint file")
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        state = upgrade_checkpoint(state)
    except Exception as error:  # torch raises many types for unreadable bytes
        raise DamagedCheckpoint(path, strategy, trial, f"unreadable: {type(error).__name__}") from error
    return state


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["strategy"], row["trial"], row["round"]


def repair_results(
    out_dir: Path, checkpoints: dict[tuple[str, int], dict[str, Any]], restarting: list[tuple[str, int]]
) -> None:
    """Make results.jsonl agree with the checkpoints before a resume.

    - Lines that are not rows (torn by a kill, blank, garbage) are dropped; all but a torn last
      line are kept in results.rejected.txt and named in a warning.
    - Rows missing from the file (deleted, cut, or lost between checkpoint and append) are written
      back from the checkpoints; those that no checkpoint holds are named.
    - Rows of (strategy, trial) pairs that ``restarting`` from round 0 (no checkpoint) are removed,
      since the rerun writes them again.
    The file is rewritten atomically, and only when something changes.
    """
    results = out_dir / RESULTS_FILE
    raw = results.read_text(encoding="utf-8", errors="replace") if results.exists() else ""
    parsed = read_results(results) if results.exists() else None
    rows = parsed.rows if parsed else []
    changed = bool(raw) and not raw.endswith("\n")
    if parsed and parsed.bad_lines:
        lines = raw.splitlines()
        rejected = "".join(f"line {n}: {lines[n - 1]}\n" for n in parsed.bad_lines)
        write_atomic(out_dir / REJECTED_FILE, rejected)
        log.warning(
            "%s: lines %s are not results rows; dropped (kept in %s)",
            results,
            ", ".join(map(str, parsed.bad_lines)),
            REJECTED_FILE,
        )
        changed = True
    restart = set(restarting)
    kept = [r for r in rows if (r["strategy"], r["trial"]) not in restart]
    if len(kept) != len(rows):
        log.warning("rows of %s are replaced: no checkpoint, so they run again", sorted(restart))
        changed = True
    present = {_key(r) for r in kept}
    for (strategy, trial), state in sorted(checkpoints.items()):
        recovered = [r for r in state["rows"] if _key(r) not in present]
        kept += recovered
        present |= {_key(r) for r in recovered}
        changed |= bool(recovered)
        lost = [n for n in range(state["round"] + 1) if (strategy, trial, n) not in present]
        if lost:
            log.warning(
                "%s trial %d: rows of rounds %s are lost and no checkpoint holds them (made by an older "
                "lplgrad); rerun that pair from its start in another folder to get them back",
                strategy,
                trial,
                lost,
            )
    if changed:
        write_atomic(results, "".join(row_line(r) for r in kept))
