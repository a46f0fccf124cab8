"""Run folders and config files written by earlier versions keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lplgrad.cli.main import main
from lplgrad.experiment.results import read_rows

FIXTURES = Path(__file__).parent / "fixtures"


def comparable(rows: list[dict], keys: set[str]) -> list[dict]:
    return sorted(({k: r[k] for k in keys} for r in rows), key=lambda r: (r["strategy"], r["trial"], r["round"]))


@pytest.mark.determinism
def test_a_folder_written_by_version_0_1_resumes_to_the_rows_it_would_have_had(tmp_path: Path) -> None:
    """tests/fixtures/run-0.1: lplgrad 0.1 stopped after round 1 of lplgrad (random not started);
    run-0.1-complete.jsonl: the same configuration run to the end by 0.1."""
    out = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-0.1", out)
    assert main(["-q", "run", "--config", str(out / "config.toml"), "--out", str(out), "--resume"]) == 0
    want = [json.loads(line) for line in (FIXTURES / "run-0.1-complete.jsonl").read_text().splitlines()]
    keys = {k for k in want[0] if not k.endswith("_seconds")}
    assert comparable(read_rows(out / "results.jsonl"), keys) == comparable(want, keys)
