"""One round for the experiment and the labeling project: the oracle is the only difference.

A project's ``query`` (its database, files, decoding, person's batch) and the experiment's round with
known labels, given the same labeled images, candidates and seed, pick the same images with the same
scores and train the same weights."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch

from lplgrad.config.schema import resolve
from lplgrad.core.pool import Pool
from lplgrad.core.round import KnownLabels, Models, RoundInputs, run_round
from lplgrad.core.seeds import SEED_INIT, derive_seed
from lplgrad.data import Split
from lplgrad.experiment.runner import make_strategy
from lplgrad.models.build import build_models
from lplgrad.models.model_file import load_models
from lplgrad.project import db, workflow
from lplgrad.project.query import query, read_inputs, round_dataset
from tests.helpers import CLASSES, make_images

SETTINGS = {"train.epochs": 2, "model.width": 4, "train.min_steps": 0, "device": "cpu"}


@pytest.mark.parametrize("strategy", ["lplgrad", "entropy", "random"])
def test_a_project_round_is_the_experiments_round_with_a_person_as_oracle(tmp_path: Path, strategy: str) -> None:
    truth = make_images(tmp_path / "pool", 30)
    make_images(tmp_path / "test", 6, seed=1, folders=True)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=SETTINGS)
    first = query(project, "random", k=9)  # a cold start, labeled by "the person"
    rows = list(csv.DictReader((first.folder / "batch.csv").open(newline="")))
    (tmp_path / "answers.csv").write_text("id,label\n" + "".join(f"{r['id']},{truth[r['path']]}\n" for r in rows))
    workflow.import_labels(project, [tmp_path / "answers.csv"])

    # What the project's round 2 will read, before it runs (the same seeded candidate draw).
    conn = db.connect(project)
    inputs = read_inputs(conn, project, 4, None, False)
    conn.close()
    dataset, train_ids, measured_on = round_dataset(inputs)
    assert measured_on == "test" and train_ids.tolist() == list(range(9))

    batch = query(project, strategy, k=4)  # the person's oracle

    # The experiment's oracle on the same data: the candidates' true labels known, a Pool over them.
    known = dataset.train.labels.clone()
    known[len(inputs.labeled) :] = torch.tensor([CLASSES.index(truth[r.path]) for r in inputs.candidates])
    simulated = dataclasses.replace(dataset, train=Split(dataset.train.images, known))
    pool = Pool(len(simulated.train))
    pool.label(train_ids, 0)
    config = resolve(
        {
            "data.name": "project",
            **SETTINGS,
            "train.lr": 0.05,
            "train.schedule": "cosine",
            "train.batch_size": 128,
            "active.strategies": ["lplgrad"],
        }
    )
    model, aux_model = build_models(config, simulated, derive_seed(config.seed, 2, SEED_INIT), torch.device("cpu"))
    first_candidate = len(inputs.labeled)
    outcome = run_round(
        RoundInputs(
            config,
            simulated,
            pool.labeled_indices(),
            torch.arange(first_candidate, len(simulated.train)),
            4,
            config.seed,
            2,
        ),
        make_strategy(strategy, config),
        Models(model, aux_model),
        KnownLabels(pool),
    )

    picked = list(csv.DictReader((batch.folder / "batch.csv").open(newline="")))
    ids = [inputs.candidates[i - first_candidate].id for i in outcome.query.selected.tolist()]
    assert [int(r["id"]) for r in picked] == ids
    assert pool.labeled_indices().numel() == 13  # the known labels were taken at once
    if outcome.query.scores is not None:
        assert [float(r["score"]) for r in picked] == pytest.approx(outcome.query.scores.tolist(), rel=1e-5)
    saved, saved_aux, _ = load_models(project / "models" / "round-2.pt")
    for a, b in zip(saved.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(saved_aux.state_dict().values(), aux_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
