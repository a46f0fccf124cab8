"""Stopping criteria, calibration, label errors and near duplicates: pure functions, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from lplgrad.quality.assess import UNKNOWN, assess
from lplgrad.quality.calibration import expected_calibration_error, fit_temperature, reliability
from lplgrad.quality.duplicates import near_duplicates, top_neighbours
from lplgrad.quality.label_errors import find_label_issues, per_class_thresholds
from lplgrad.quality.stopping import (
    PLATEAU,
    STABLE,
    TARGET,
    Rules,
    Signals,
    criteria,
    first_stop,
    mean_uncertainty,
    prediction_agreement,
    summary,
    wilson_interval,
)
from lplgrad.report.stopping import stop_outcomes, verdict_lines


def test_kappa_is_one_for_identical_predictions_and_matches_the_formula() -> None:
    a = np.array([0, 1, 2, 2, 1, 0])
    assert prediction_agreement(a, a) == 1.0
    assert prediction_agreement(np.zeros(5, int), np.zeros(5, int)) == 1.0  # 0/0 in the formula
    # Hand-computed: agreement 4/6; chance: (2*2 + 2*1 + 2*3) / 36 = 1/3 -> kappa = (2/3 - 1/3) / (2/3) = 0.5
    b = np.array([0, 1, 2, 2, 2, 1])
    b[0], b[5] = 0, 2  # predictions 0,1,2,2,2,2: agreement at 0,1,2,3 = 4 of 6
    p_a = np.bincount(a, minlength=3) / 6
    p_b = np.bincount(b, minlength=3) / 6
    chance = float(p_a @ p_b)
    assert prediction_agreement(a, b) == pytest.approx((4 / 6 - chance) / (1 - chance))
    with pytest.raises(ValueError):
        prediction_agreement(a, a[:3])


def test_uncertainty_and_wilson_interval() -> None:
    assert mean_uncertainty(torch.full((4, 5), 0.2)) == pytest.approx(1.0)
    assert mean_uncertainty(torch.eye(3)) == pytest.approx(0.0, abs=1e-9)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook Wilson interval
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == pytest.approx(1.0)


def test_a_perfectly_calibrated_model_has_zero_ece_and_an_overconfident_one_does_not() -> None:
    n = 1000
    probabilities = torch.tensor([[0.75, 0.25]]).repeat(n, 1)
    labels = torch.zeros(n, dtype=torch.long)
    labels[750:] = 1  # right exactly 75% of the time at confidence 0.75
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-6)
    over = torch.tensor([[0.95, 0.05]]).repeat(n, 1)
    labels[500:] = 1
    assert expected_calibration_error(over, labels) == pytest.approx(0.45, abs=1e-6)
    bins = reliability(over, labels)
    assert bins.counts[9] == n and bins.accuracy[9] == pytest.approx(0.5) and bins.confidence[0] is None


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_predicted_class() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=generator)
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=generator).flatten()
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(logits[:10], labels[:10]) == 1.0  # too few held-out labels to fit


def test_confident_learning_flags_flipped_labels_on_separable_data() -> None:
    features, truth = make_blobs(n_samples=300, centers=[[0, 0], [8, 0], [0, 8]], cluster_std=1.0, random_state=0)
    given = truth.copy()
    flipped = np.array([3, 50, 120, 200, 299])
    given[flipped] = (given[flipped] + 1) % 3
    probabilities = cross_val_predict(LogisticRegression(max_iter=1000), features, given, cv=5, method="predict_proba")
    issues = find_label_issues(torch.from_numpy(probabilities), torch.from_numpy(given))
    flagged = set(issues.flagged.nonzero().flatten().tolist())
    assert set(flipped) <= flagged and len(flagged) <= len(flipped) + 3
    assert (issues.suggested[flipped].numpy() == truth[flipped]).all()
    assert set(issues.order[: len(flipped)].tolist()) == set(flipped)  # the flipped ones are the most doubtful


def test_thresholds_of_a_class_nobody_was_given_count_no_image() -> None:
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    thresholds = per_class_thresholds(probabilities, torch.tensor([0, 1]), 3)
    assert thresholds.tolist()[:2] == pytest.approx([0.9, 0.8]) and thresholds[2] == float("inf")
    assert not find_label_issues(probabilities, torch.tensor([0, 1])).flagged.any()


def test_near_duplicates_within_and_between_sets_in_any_chunk_size() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(50, 64, generator=generator)
    features[10] = features[3]  # an exact copy
    features[20] = features[7] + 0.05 * torch.randn(64, generator=generator)  # a near copy
    for chunk in (7, 1024):
        pairs = near_duplicates(features, threshold=0.97, chunk=chunk)
        assert {(int(i), int(j)) for i, j in zip(pairs.first, pairs.second, strict=True)} == {(3, 10), (7, 20)}
        assert pairs.similarity[0] == pytest.approx(1.0)
    test = torch.stack([features[7] * 2.0, torch.randn(64, generator=generator)])  # scale does not matter
    between = near_duplicates(test, features, threshold=0.97)
    assert {(int(i), int(j)) for i, j in zip(between.first, between.second, strict=True)} == {(0, 7), (0, 20)}
    same = torch.ones(6, 8)  # six identical images: 15 pairs, at most 2 kept per first image
    assert len(top_neighbours(near_duplicates(same, threshold=0.97), per_row=2)) == 2 + 2 + 2 + 2 + 1
    bounded = near_duplicates(same, same, threshold=0.97, per_row=3, chunk=4)  # 3 per row, not 6
    assert len(bounded) == 18 and bool((bounded.similarity >= 0.97).all())
    top2 = near_duplicates(features, features, threshold=0.97, per_row=2)  # itself and its copy, if any
    partners = {(int(i), int(j)) for i, j in zip(top2.first, top2.second, strict=True) if i != j}
    assert partners == {(3, 10), (10, 3), (7, 20), (20, 7)}


def history(kappas: list[float | None], accuracies: list[float], n: int = 2000) -> list[Signals]:
    out = []
    for i, (kappa, accuracy) in enumerate(zip(kappas, accuracies, strict=True)):
        low, high = wilson_interval(round(accuracy * n), n)
        out.append(Signals(i + 1, 20 * (i + 1), accuracy, low, high, kappa, 0.2))
    return out


def test_stable_predictions_needs_the_whole_window_and_says_since_when() -> None:
    rules = Rules(kappa=0.99, window=3)
    rounds = history([None, 0.5, 0.995, 0.996, 0.999, 0.999], [0.5, 0.6, 0.7, 0.8, 0.81, 0.81])
    assert first_stop(rounds[:4], STABLE, rules) is None
    assert first_stop(rounds, STABLE, rules) == 4
    states = {c.name: c for c in criteria(rounds, rules)}
    assert states[STABLE].met and states[STABLE].since == 5
    assert TARGET not in states
    line = summary(rounds, rules)
    assert line.startswith("predictions stable since round 5 (kappa 0.999)") and line.endswith("you may stop")
    assert summary(rounds[:3], rules).endswith("keep labeling")


def test_the_accuracy_plateau_and_target() -> None:
    rules = Rules(window=2, target=0.8)
    rising = history([None] * 4, [0.5, 0.6, 0.7, 0.8])
    flat = history([None] * 4, [0.5, 0.795, 0.8, 0.8])
    assert first_stop(rising, PLATEAU, rules) is None
    assert first_stop(flat, PLATEAU, rules) == 3
    assert first_stop(flat, TARGET, rules) is None  # 80% measured, but the interval's lower end is below 80%
    assert first_stop(history([None], [0.9]), TARGET, rules) == 0


def test_assess_compares_only_the_stop_images_both_rounds_predicted() -> None:
    stop_logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    first = assess(None, None, stop_logits, None)
    assert first.stop_kappa is None and first.stop_predictions.tolist() == [0, 1, 0]
    again = assess(None, None, stop_logits, torch.tensor([0, 1, UNKNOWN]))
    assert again.stop_kappa == 1.0 and again.accuracy_low is None
    # Images the model trained on are left out: only the third is compared, and it changed class.
    changed = assess(None, None, stop_logits, torch.tensor([0, 1, 1]), torch.tensor([True, True, False]))
    assert changed.stop_kappa is not None and changed.stop_kappa < 1
    assert changed.stop_uncertainty == pytest.approx(mean_uncertainty(torch.softmax(stop_logits[2:], dim=1)))
    measured = assess(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]), None, None)
    assert measured.accuracy_low is not None and measured.accuracy_low < 0.5 < measured.accuracy_high  # type: ignore[operator]
    assert measured.temperature == 1.0 and measured.ece is not None


def row(strategy: str, trial: int, r: int, accuracy: float, kappa: float | None) -> dict[str, object]:
    low, high = wilson_interval(round(accuracy * 3000), 3000)
    return {
        "strategy": strategy,
        "trial": trial,
        "round": r,
        "labeled": 20 + 40 * r,
        "test_accuracy": accuracy,
        "accuracy_low": low,
        "accuracy_high": high,
        "stop_kappa": kappa,
        "stop_uncertainty": 0.3,
    }


def test_the_report_says_where_each_rule_stops_and_what_it_left() -> None:
    accuracies = [0.5, 0.6, 0.7, 0.75, 0.755, 0.76, 0.76]
    kappas = [None, 0.8, 0.9, 0.995, 0.996, 0.998, 0.999]
    rows = [row("random", t, r, a, k) for t in (0, 1) for r, (a, k) in enumerate(zip(accuracies, kappas, strict=True))]
    outcomes = {o.rule: o for o in stop_outcomes(rows, ["random"], Rules())}
    stable = outcomes["stable predictions"]
    assert (stable.stopped, stable.labels) == (2, 20 + 40 * 5) and stable.left == pytest.approx(0.0)
    assert outcomes["low uncertainty"].stopped == 0 and outcomes["low uncertainty"].labels == 20 + 40 * 6
    assert outcomes["stable predictions (kappa >= 0.95)"].labels == 20 + 40 * 4  # mean of 0.9, 0.995, 0.996
    lines = verdict_lines(list(outcomes.values()))
    assert lines and "stops earliest within 1 point" in lines[0]
