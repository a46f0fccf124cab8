"""Crash-safe state of a run folder, so a killed run resumes exactly where it stopped.

After each finished round of a (strategy, trial), DIR/checkpoints/<strategy>-trial<t>.pt is
replaced atomically (temporary file in the same folder, fsync, rename) with:
the round just finished, the pool's ``labeled_at`` after that round's query, the weights of
w_main and w_aux (for warm starts; dropped once the last round is done) and that round's
results row. The row is appended to results.jsonl only after the checkpoint exists, so a
kill between the two loses nothing: resuming re-appends the row from the checkpoint.

No random-number-generator state is needed: every random draw of a round comes from a
generator seeded by (run seed, trial, round, purpose), see ``experiment.derive_seed``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lplgrad.results import RESULTS_FILE, append_row, read_rows, write_atomic_with

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(out_dir: Path, strategy: str, trial: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"{strategy}-trial{trial}.pt"


def save_atomic(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: the old file stays valid until the new one is whole."""
    write_atomic_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(out_dir: Path, strategy: str, trial: int) -> dict[str, Any] | None:
    path = checkpoint_path(out_dir, strategy, trial)
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def repair_results(out_dir: Path, checkpoints: list[dict[str, Any]]) -> None:
    """Make results.jsonl agree with the checkpoints after a kill.

    Cuts a torn last line (a kill mid-append) and re-appends each checkpoint's row if the
    kill came between saving the checkpoint and appending its row.
    """
    results = out_dir / RESULTS_FILE
    if results.exists():
        data = results.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(results, "r+b") as handle:
                handle.truncate(len(complete))
                handle.flush()
                os.fsync(handle.fileno())
    present = {(r["strategy"], r["trial"], r["round"]) for r in read_rows(results)} if results.exists() else set()
    for state in checkpoints:
        row = state["row"]
        if (row["strategy"], row["trial"], row["round"]) not in present:
            append_row(results, row)
