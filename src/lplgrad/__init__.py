"""lplgrad: deep active learning for image classification, built around LPLgrad.

Training: ResNet-18 + loss prediction module (Yoo & Kweon 2019), CE + ranking loss.
Querying: norm of the gradient of each candidate's predictive entropy w.r.t. all
main-model parameters; the largest are labeled next.
"""

from lplgrad.config.schema import RunConfig
from lplgrad.core.pool import Pool
from lplgrad.data import Augment, Dataset, Split
from lplgrad.data.loaders import list_datasets, load_dataset
from lplgrad.experiment.runner import run_experiment
from lplgrad.models import LossPredictionModule, ModelOutput, ResNet18
from lplgrad.scoring.gradnorm import per_sample_grad_norms
from lplgrad.strategies import QueryContext, Selection, Strategy, create_strategy, list_strategies, register_strategy
from lplgrad.train.fit import fit
from lplgrad.train.inference import evaluate, predict
from lplgrad.train.losses import loss_prediction_loss

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "Augment",
    "Dataset",
    "LossPredictionModule",
    "ModelOutput",
    "Pool",
    "QueryContext",
    "ResNet18",
    "RunConfig",
    "Selection",
    "Split",
    "Strategy",
    "create_strategy",
    "evaluate",
    "fit",
    "list_datasets",
    "list_strategies",
    "load_dataset",
    "loss_prediction_loss",
    "per_sample_grad_norms",
    "predict",
    "register_strategy",
    "run_experiment",
]
