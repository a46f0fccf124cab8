import copy
import json

import pytest
import torch

from lplgrad.config import schema as cfg
from lplgrad.core.schedule import check_fits, labeled_schedule
from lplgrad.core.seeds import SEED_INIT, derive_seed
from lplgrad.errors import UserError
from lplgrad.experiment.runner import run_experiment
from lplgrad.models.build import build_models
from tests.helpers import make_dataset


def test_schedule_by_rounds_and_by_budget() -> None:
    assert labeled_schedule(10, 5, 3) == [10, 15, 20]
    assert labeled_schedule(10, 5, 99, budget=20) == [10, 15, 20]
    assert labeled_schedule(10, 4, 99, budget=20) == [10, 14, 18, 20]  # last query is smaller


@pytest.mark.parametrize(
    ("sizes", "by_budget", "message"),
    [([200, 205], False, "initial set"), ([10, 15, 101], True, "budget"), ([10, 60, 110], False, "need 110")],
)
def test_schedule_larger_than_the_pool_is_refused(sizes: list[int], by_budget: bool, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_fits(sizes, 100, by_budget)


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, t, r, p) for t in range(3) for r in range(3) for p in range(3)}) == 27
    assert 0 <= derive_seed(2**40, 7) < 2**63


def small_config(**extra: object) -> cfg.RunConfig:
    values = {
        "active.strategies": ["lplgrad", "random", "coreset"],
        "active.trials": 2,
        "active.initial_size": 8,
        "active.query_size": 6,
        "active.rounds": 3,
        "active.candidate_subset": 30,
        "train.epochs": 2,
        "train.batch_size": 8,
        "model.width": 4,
        "device": "cpu",
        **extra,
    }
    return cfg.resolve(values)


def test_loop_bookkeeping(tmp_path) -> None:
    rows = run_experiment(small_config(), tmp_path / "run", dataset=make_dataset())
    assert len(rows) == 2 * 3 * 3
    written = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    assert (tmp_path / "run" / "config.toml").exists()

    for trial in range(2):
        for strategy in ["lplgrad", "random", "coreset"]:
            own = [r for r in rows if r["trial"] == trial and r["strategy"] == strategy]
            assert [r["labeled"] for r in own] == [8, 14, 20]
            assert [len(r["selected"]) for r in own] == [6, 6, 0]
            assert [r["candidates"] for r in own] == [30, 30, 0]
            picked = [i for r in own for i in r["selected"]]
            assert len(set(picked)) == len(picked) == 12
            for row in own:
                assert 0.0 <= row["test_accuracy"] <= 1.0 and len(row["per_class_accuracy"]) == 4
                assert row["train_seconds"] > 0

    # Paired comparison: round 0 of random and coreset train on the same initial set with the same init.
    first = {(r["trial"], r["strategy"]): r for r in rows if r["round"] == 0}
    for trial in range(2):
        assert first[(trial, "random")]["test_accuracy"] == first[(trial, "coreset")]["test_accuracy"]
    lplgrad_rows = [r for r in rows if r["strategy"] == "lplgrad"]
    assert all(r["reduction"] == "layer_sum" for r in lplgrad_rows)


def test_initial_sets_are_shared_across_strategies_and_differ_across_trials(monkeypatch) -> None:
    from lplgrad.experiment import runner as experiment

    seen = []
    original = experiment._start

    def spy(config, dataset, trial_seed, initial, *args):
        seen.append((trial_seed - config.seed, initial.clone()))
        return original(config, dataset, trial_seed, initial, *args)

    monkeypatch.setattr(experiment, "_start", spy)
    run_experiment(small_config(**{"active.rounds": 1}), dataset=make_dataset())
    by_trial: dict[int, list[torch.Tensor]] = {}
    for trial, initial in seen:
        by_trial.setdefault(trial, []).append(initial)
    for initials in by_trial.values():
        assert all(torch.equal(initials[0], other) for other in initials)
    assert not torch.equal(by_trial[0][0], by_trial[1][0])


@pytest.mark.determinism
def test_same_seed_same_results() -> None:
    config = small_config(**{"active.trials": 1, "active.strategies": ["entropy"]})
    a = run_experiment(config, dataset=make_dataset())
    b = run_experiment(config, dataset=make_dataset())
    strip = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in a]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in b]


@pytest.mark.parametrize("warm_start", [True, False])
def test_warm_start_continues_the_last_round_and_cold_start_begins_anew(monkeypatch, warm_start: bool) -> None:
    from lplgrad.core import round as one_round

    starts, ends = [], []
    original = one_round.fit

    def weights(model, aux_model):
        return copy.deepcopy({**model.state_dict(), **{f"aux.{k}": v for k, v in aux_model.state_dict().items()}})

    def spy(model, dataset, labeled, config, seed, aux_model, **kwargs):
        starts.append(weights(model, aux_model))
        result = original(model, dataset, labeled, config, seed, aux_model, **kwargs)
        ends.append(weights(model, aux_model))
        return result

    monkeypatch.setattr(one_round, "fit", spy)
    values = {"train.warm_start": warm_start, "active.trials": 1, "active.strategies": ["lplgrad"]}
    config = small_config(**values)
    dataset = make_dataset()
    run_experiment(config, dataset=dataset)
    assert len(starts) == 3
    for round_index in (1, 2):
        seed = derive_seed(config.seed, round_index, SEED_INIT)
        expected = ends[round_index - 1] if warm_start else weights(*build_models(config, dataset, seed, "cpu"))
        for key, value in starts[round_index].items():
            assert torch.equal(value, expected[key]), key


def test_refuses_to_mix_with_an_earlier_run(tmp_path) -> None:
    config = small_config(**{"active.trials": 1, "active.rounds": 1, "active.strategies": ["random"]})
    run_experiment(config, tmp_path, dataset=make_dataset())
    before = (tmp_path / "results.jsonl").read_text()
    with pytest.raises(UserError, match="already holds results"):
        run_experiment(config, tmp_path, dataset=make_dataset())
    assert (tmp_path / "results.jsonl").read_text() == before


def test_slices_of_one_run_share_a_folder(tmp_path) -> None:
    base = {"active.trials": 1, "active.rounds": 2}
    run_experiment(small_config(**base, **{"active.strategies": ["random"]}), tmp_path, dataset=make_dataset())
    run_experiment(small_config(**base, **{"active.strategies": ["entropy"]}), tmp_path, dataset=make_dataset())
    second_trial = small_config(**base, **{"active.strategies": ["random"], "active.trial_offset": 1})
    run_experiment(second_trial, tmp_path, dataset=make_dataset())
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted({(r["strategy"], r["trial"]) for r in rows}) == [("entropy", 0), ("random", 0), ("random", 1)]

    whole = run_experiment(
        small_config(**{"active.trials": 2, "active.rounds": 2, "active.strategies": ["random"]}),
        dataset=make_dataset(),
    )
    assert [r["selected"] for r in whole if r["trial"] == 1] == [r["selected"] for r in rows if r["trial"] == 1]

    with pytest.raises(UserError, match="already holds results for random trial 0; add --resume"):
        run_experiment(small_config(**base, **{"active.strategies": ["random"]}), tmp_path, dataset=make_dataset())
    with pytest.raises(UserError, match=r"a run with a different configuration: train.epochs differ"):
        run_experiment(
            small_config(**base, **{"train.epochs": 3, "active.strategies": ["margin"]}),
            tmp_path,
            dataset=make_dataset(),
        )


def test_a_run_leaves_torch_global_state_as_it_found_it() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    config = small_config(**{"active.trials": 1, "active.strategies": ["random"], "deterministic": True})
    run_experiment(config, dataset=make_dataset())
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(3), expected_draw)  # the global generator was not reseeded


def test_deterministic_refuses_channels_last_on_the_cpu() -> None:
    config = small_config(**{"deterministic": True, "train.channels_last": True})
    with pytest.raises(UserError, match="channels_last is not bit-reproducible on CPUs"):
        run_experiment(config, dataset=make_dataset())
