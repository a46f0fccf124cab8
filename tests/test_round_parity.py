"""One round for the experiment and the labeling project: the oracle is the only difference.

A project's ``query`` (its database, fingerprints, decoding, the person's batch, the model file) and
the experiment's loop (``run_rounds`` over a ``Pool`` with known labels, drawing its own candidates),
given the same labeled images, unlabeled images and seed, pick the same images with the same scores
and train the same weights."""

from __future__ import annotations

import copy
import csv
import dataclasses
from pathlib import Path

import pytest
import torch

from lplgrad.core.pool import Pool
from lplgrad.core.seeds import SEED_INIT, derive_seed
from lplgrad.data import Split
from lplgrad.experiment.loop import Learner, run_rounds
from lplgrad.experiment.runner import make_strategy
from lplgrad.models.build import build_models
from lplgrad.models.model_file import load_models
from lplgrad.project import db, workflow
from lplgrad.project.query import query, read_inputs, round_dataset
from lplgrad.project.settings import read_settings
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

    # The same images for the experiment: the labeled ones, then every unlabeled one in the project's
    # order (the loop draws its candidates itself), with their true labels (the oracle knows them).
    conn = db.connect(project)
    inputs = read_inputs(conn, project, 4, 10**6, False)  # a subset larger than the pool: every image
    queryable = sorted(inputs.candidates, key=lambda row: row.id)
    conn.close()
    dataset, train_ids, measured_on = round_dataset(dataclasses.replace(inputs, candidates=queryable))
    assert measured_on == "test" and train_ids.tolist() == list(range(9))
    known = dataset.train.labels.clone()
    known[len(inputs.labeled) :] = torch.tensor([CLASSES.index(truth[row.path]) for row in queryable])
    simulated = dataclasses.replace(dataset, train=Split(dataset.train.images, known))
    config = read_settings(project)
    pool = Pool(len(simulated.train))
    pool.label(train_ids, 0)
    model, aux_model = build_models(config, simulated, derive_seed(config.seed, 2, SEED_INIT), torch.device("cpu"))
    learner = Learner(model, aux_model, pool)
    labeled = len(inputs.labeled)
    after_round_2: dict[str, dict[str, torch.Tensor]] = {}

    class KeepRound2:  # the loop goes on to train its last round; the weights of round 2 are compared
        def round_finished(self, record, learner) -> None:  # type: ignore[no-untyped-def]
            if record.round == 2:
                after_round_2["model"] = copy.deepcopy(learner.model.state_dict())
                after_round_2["aux"] = copy.deepcopy(learner.aux_model.state_dict())

    sizes = [0, 0, labeled, labeled + 4]  # round 2 of the experiment: trained on the 9, queries 4
    record = run_rounds(config, simulated, make_strategy(strategy, config), 0, sizes, learner, 2, [KeepRound2()])[0]

    batch = query(project, strategy, k=4)  # the person's oracle, round 2 of the project
    picked = list(csv.DictReader((batch.folder / "batch.csv").open(newline="")))
    assert [int(r["id"]) for r in picked] == [queryable[i - labeled].id for i in record.selected]
    assert pool.labeled_indices().numel() == labeled + 4  # the known labels were taken at once
    if record.selected_scores is not None:
        assert [float(r["score"]) for r in picked] == pytest.approx(record.selected_scores, rel=1e-5)
    saved, saved_aux, _ = load_models(project / "models" / "round-2.pt")
    for a, b in zip(saved.state_dict().values(), after_round_2["model"].values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(saved_aux.state_dict().values(), after_round_2["aux"].values(), strict=True):
        assert torch.equal(a, b)
