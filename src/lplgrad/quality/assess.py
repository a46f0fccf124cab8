"""What a round measures beyond accuracy, for both stores: the Wilson interval, calibration on the
measured images, and the stop set's signals (module docstrings of ``stopping`` and ``calibration``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lplgrad.quality.calibration import Reliability, fit_temperature, reliability
from lplgrad.quality.stopping import mean_uncertainty, prediction_agreement, wilson_interval

UNKNOWN = -1  # in ``previous_stop``: no previous prediction of that stop-set image


@dataclass(frozen=True)
class Assessment:
    accuracy_low: float | None = None  # 95% Wilson interval of the accuracy
    accuracy_high: float | None = None
    ece: float | None = None  # expected calibration error of the uncalibrated model, on the measured images
    temperature: float | None = None  # fitted on the measured images; 1.0 with too few of them
    reliability: Reliability | None = None
    stop_predictions: Tensor | None = None  # [S] predicted classes of the stop set
    stop_kappa: float | None = None  # vs the previous round's predictions of the same images
    stop_uncertainty: float | None = None


def assess(
    test_logits: Tensor | None,
    test_labels: Tensor | None,
    stop_logits: Tensor | None,
    previous_stop: Tensor | None,
    stop_trained: Tensor | None = None,
) -> Assessment:
    """The round's assessment. ``previous_stop`` [S] is aligned with ``stop_logits`` [S, C], with
    ``UNKNOWN`` where the previous round did not predict that image (e.g. one added since);
    ``stop_trained`` [S] marks the stop-set images the model was trained on, left out of kappa and
    uncertainty (a model predicts its training images stably: they would make it look done). Every
    image's prediction is still returned, so the next round can compare with any of them."""
    measured: dict[str, object] = {}
    if test_logits is not None and test_labels is not None and test_labels.numel():
        correct = int((test_logits.argmax(1) == test_labels).sum())
        low, high = wilson_interval(correct, test_labels.numel())
        bins = reliability(torch.softmax(test_logits.float(), dim=1), test_labels)
        measured = {
            "accuracy_low": low,
            "accuracy_high": high,
            "ece": bins.ece(),
            "temperature": fit_temperature(test_logits, test_labels),
            "reliability": bins,
        }
    if stop_logits is None or not stop_logits.shape[0]:
        return Assessment(**measured)  # type: ignore[arg-type]
    probabilities = torch.softmax(stop_logits.float(), dim=1).cpu()
    predictions = probabilities.argmax(dim=1)
    unlabeled = torch.ones(predictions.numel(), dtype=torch.bool) if stop_trained is None else ~stop_trained.cpu()
    kappa = None
    if previous_stop is not None:
        known = (previous_stop.cpu() != UNKNOWN) & unlabeled
        if bool(known.any()):
            kappa = prediction_agreement(previous_stop.cpu()[known].numpy(), predictions[known].numpy())
    return Assessment(
        **measured,  # type: ignore[arg-type]
        stop_predictions=predictions,
        stop_kappa=kappa,
        stop_uncertainty=mean_uncertainty(probabilities[unlabeled]) if bool(unlabeled.any()) else None,
    )
