"""Run configuration: the schema (dataclasses), its validation, and resolution in the order
dataclass defaults <- the dataset's registered defaults <- preset <- TOML file <- CLI flags <- --set.

Every key is a dotted path into ``RunConfig`` (``train.lr``, ``active.query_size``, ``seed``);
unknown keys and values of the wrong type are errors that name the valid choices. None means
"not set". Reading and writing settings as text is ``config_files.py``; the resolved
configuration is written next to the results as config.toml, which ``--config`` reads back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lplgrad.data.loaders import dataset_defaults
from lplgrad.errors import UserError, quoted


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = "data"  # where torchvision datasets live / are downloaded
    download: bool = False
    image_size: int | None = None  # square size to resize folder images to; None: native if uniform, else 224
    holdout: float = 0.2  # test fraction for data without a test split (digits, caltech101, one folder)
    split_seed: int = 0  # the holdout split is fixed across trials so every trial has the same test set
    cache_dir: str = ""  # decoded image folders; "" = $LPLGRAD_CACHE or ~/.cache/lplgrad
    flip: bool = True  # horizontal-flip augmentation for image folders


@dataclass
class ModelConfig:
    width: int = 64  # channels of ResNet-18's first stage (64 in the paper)
    stem: str = "auto"  # auto (cifar for images <= 64 px, else imagenet) | cifar | imagenet
    aux_hidden: int = 128  # hidden units per feature level in w_aux, the loss prediction module
    backbone: str = "resnet18"  # resnet18 (from scratch) | efficientnet-lite0 | torchvision:NAME (models/backbones.py)
    weights: str = "default"  # default | imagenet | none | a state-dict file (default: ImageNet if pretrained)
    input_size: int | None = None  # a pretrained backbone's input size in px; None: its own (224)


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[float] = field(default_factory=lambda: [0.8])  # fractions of epochs; lr *= gamma there
    gamma: float = 0.1
    margin: float = 1.0  # of the ranking loss
    ranking_weight: float = 1.0  # lambda: total = CE + lambda * ranking loss of w_aux
    detach_fraction: float = 0.6  # fraction of epochs after which w_aux's inputs are detached (120 of 200)
    warm_start: bool = True  # keep the models across rounds, as the paper's public code does
    eval_batch_size: int = 512
    channels_last: bool = False  # channels_last training batches: faster on some CPUs, not bit-reproducible
    min_steps: int = 0  # train at least this many optimizer steps per round (more epochs on small labeled sets)
    schedule: str = "multistep"  # multistep (x gamma at the milestones) | cosine (lr to 0 over all steps)
    label_smoothing: float = 0.0  # of the main model's cross-entropy (w_aux still ranks the plain CE)
    sync_batchnorm: bool = False  # under torchrun on GPUs: BatchNorm statistics over the whole batch, not a shard
    # all: train every weight | head: a linear head on the frozen backbone's cached features |
    # last: its last stage and the head on its frozen trunk's cached output (models/last_stage.py).
    # Not set: all for resnet18 (from scratch), head for a pretrained backbone (``resolve``).
    finetune: str = "all"


@dataclass
class ActiveConfig:
    strategies: list[str] = field(default_factory=lambda: ["lplgrad"])
    trials: int = 1
    initial_size: int = 1000  # B: size of the random initial labeled set
    query_size: int = 1000  # images labeled per round
    rounds: int = 10  # training rounds (rounds - 1 queries); ignored when a budget is set
    budget: int | None = None  # A: final labeled-set size; when set, overrides rounds
    trial_offset: int = 0  # run trials trial_offset .. trial_offset + trials - 1 (split work across machines)
    candidate_subset: int = 10000  # R: random unlabeled candidates scored per round (Beluch et al. 2018)
    reduction: str = "layer_sum"  # gradient-norm aggregation: layer_sum (public code) | global (eq. 8)
    score_bf16: bool = False  # bf16 autocast for gradient-norm scoring (GPU speed; scores approximate)
    embeddings: str | None = None  # .npy [N, D] of the training pool, rows in its order, for typiclust/probcover
    embeddings_index: str | None = None  # CSV path,row: which .npy row holds each image of an image folder
    score_batch_size: int = 256  # images per forward pass of forward-only scores; gradient norms chunk by memory
    duplicate_threshold: float = 0.97  # projects: cosine of pretrained features from which images are near duplicates


@dataclass
class StopConfig:
    """Stopping criteria, computed every round (quality/stopping.py)."""

    set_size: int = 1000  # stop set: fixed pool images whose predictions successive models are compared on
    kappa: float = 0.99  # stable predictions: Cohen's kappa >= this ... (Bloodgood & Vijay-Shanker 2009)
    window: int = 3  # ... for this many rounds; also the accuracy plateau's window
    uncertainty: float = 0.1  # low uncertainty: the stop set's mean normalised entropy <= this
    target: float | None = None  # accuracy target (fraction): the Wilson interval's lower end >= this


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    seed: int = 0  # trial t uses seed + t
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPUs)
    save_artifacts: bool = False  # features and confidences at 3 rounds, for t-SNE / confidence figures
    # Options of one strategy, over the active.* scoring settings: {"bald": {"passes": 50}}, set as
    # strategy.bald.passes = 50 (a [strategy.bald] table in TOML). Every dataclass field of a
    # registered strategy is a key, checked like the others.
    strategy: dict[str, dict[str, Any]] = field(default_factory=dict)


# Keys that select a slice of a run; slices of one run may differ only in these.
SLICE_KEYS = ("active.strategies", "active.trials", "active.trial_offset")


def without_slice(config: RunConfig) -> dict[str, Any]:
    """The configuration as dotted keys, minus the keys that only select a slice of the run."""
    return {k: v for k, v in flatten(to_dict(config)).items() if k not in SLICE_KEYS}


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys() -> dict[str, Any]:
    """Every dotted key and its type, e.g. {"train.lr": float, "seed": int, "strategy.bald.passes": int}."""
    keys: dict[str, Any] = {}
    for name, kind in _field_types(RunConfig).items():
        if name == STRATEGY_SECTION:
            keys.update(strategy_keys())
        elif dataclasses.is_dataclass(kind):
            for sub, sub_kind in _field_types(kind).items():  # type: ignore[arg-type]
                keys[f"{name}.{sub}"] = sub_kind
        else:
            keys[name] = kind
    return keys


STRATEGY_SECTION = "strategy"


def strategy_keys() -> dict[str, Any]:
    """strategy.<name>.<option> for every dataclass field of every registered strategy."""
    from lplgrad.strategies import list_strategies, strategy_class  # the strategies import the data layer

    keys: dict[str, Any] = {}
    for name in list_strategies():
        cls = strategy_class(name)
        hints = _field_types(cls)
        keys.update({f"{STRATEGY_SECTION}.{name}.{option}": hints[option] for option in cls.options()})
    return keys


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check ``value`` against the field type, with the few conversions a CLI user expects."""
    bad = UserError(f"{key} expects {getattr(kind, '__name__', str(kind))}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if typing.get_origin(kind) is typing.Literal:  # one of the listed values
        if value in typing.get_args(kind):
            return value
        choices = ", ".join(map(str, typing.get_args(kind)))
        raise UserError(f"{key} must be one of {choices}, got {quoted(value)}")
    if isinstance(kind, types.UnionType):  # X | None: None means "not set"
        if value is None:
            return None
        (inner,) = [k for k in typing.get_args(kind) if k is not type(None)]
        return _coerce(key, value, inner)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            if item is float:
                try:
                    value = [float(v) for v in value]
                except ValueError:
                    raise bad from None
        if isinstance(value, int | float) and not isinstance(value, bool) and item is float:
            value = [value]
        if not isinstance(value, list):
            raise bad
        return [_coerce(key, v, item) for v in value]
    raise bad


def check_keys(values: dict[str, Any]) -> dict[str, Any]:
    """Type-check dotted keys; unknown keys name the valid ones."""
    keys = valid_keys()
    checked = {}
    for key, value in values.items():
        if key not in keys:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(keys))}")
        checked[key] = _coerce(key, value, keys[key])
    return checked


def apply(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """Set dotted keys on a copy of ``config``."""
    config = dataclasses.replace(
        config,
        **{
            f.name: dataclasses.replace(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))
        },
    )
    config.strategy = {name: dict(options) for name, options in config.strategy.items()}
    for key, value in values.items():
        if key.startswith(STRATEGY_SECTION + "."):
            _, strategy, option = key.split(".", 2)
            config.strategy.setdefault(strategy, {})[option] = value
            continue
        section, _, name = key.rpartition(".")
        target = getattr(config, section) if section else config
        setattr(target, name, value)
    return config


def resolve(user_values: dict[str, Any]) -> RunConfig:
    """Defaults <- dataset defaults <- ``user_values`` (dotted keys from file, flags and --set, in that order)."""
    user_values = check_keys(user_values)
    name = user_values.get("data.name", DataConfig.name)
    defaults = dataset_defaults(name)
    config = apply(apply(RunConfig(), check_keys(defaults)), user_values)
    if "train.finetune" not in {**defaults, **user_values} and config.model.backbone != "resnet18":
        config.train.finetune = "head"  # a pretrained backbone is used frozen unless told otherwise
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Range checks that need no data; pool-size checks happen once the data is loaded."""
    positive = {
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "active.trials": config.active.trials,
        "active.initial_size": config.active.initial_size,
        "active.query_size": config.active.query_size,
        "active.rounds": config.active.rounds,
        "active.candidate_subset": config.active.candidate_subset,
        "model.aux_hidden": config.model.aux_hidden,
        "model.width": config.model.width,
        "active.score_batch_size": config.active.score_batch_size,
        "train.eval_batch_size": config.train.eval_batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
    if config.train.batch_size < 2:  # BatchNorm batch statistics and the ranking loss's pairs need two
        raise UserError(f"train.batch_size must be >= 2, got {config.train.batch_size}")
    _check_training_numbers(config.train)
    if config.train.min_steps < 0:
        raise UserError(f"train.min_steps must be >= 0, got {config.train.min_steps}")
    if config.train.schedule not in ("multistep", "cosine"):
        raise UserError(f"train.schedule must be multistep or cosine, got {config.train.schedule!r}")
    _check_backbone(config)
    _check_stop(config.stop)
    if not 0.95 <= config.active.duplicate_threshold <= 1:
        raise UserError(
            "active.duplicate_threshold must be in [0.95, 1] (pairs are stored from 0.95), "
            f"got {config.active.duplicate_threshold}"
        )
    if not 0 <= config.train.label_smoothing < 1:
        raise UserError(f"train.label_smoothing must be in [0, 1), got {config.train.label_smoothing}")
    active = config.active
    if active.initial_size < 2:  # a batch of one is skipped in training (BatchNorm), so one image trains nothing
        raise UserError(
            f"active.initial_size must be >= 2 (training needs two labeled images), got {active.initial_size}"
        )
    if active.candidate_subset < active.query_size:
        raise UserError(
            f"active.candidate_subset ({active.candidate_subset}) must be >= active.query_size "
            f"({active.query_size}): each query picks from the scored candidates"
        )
    duplicates = sorted({s for s in config.active.strategies if config.active.strategies.count(s) > 1})
    if duplicates:
        raise UserError(f"active.strategies lists {', '.join(duplicates)} more than once")
    last_seed = config.seed + config.active.trial_offset + config.active.trials - 1
    if config.seed < 0 or last_seed >= 2**32:  # seeds are 32-bit words of the seed sequence
        raise UserError(f"seed must be in [0, 2**32) for every trial (seed + trial), got {config.seed}")
    if config.active.trial_offset < 0:
        raise UserError(f"active.trial_offset must be >= 0, got {config.active.trial_offset}")
    if active.budget is not None and active.budget < active.initial_size:
        raise UserError(f"active.budget ({active.budget}) is smaller than the initial set ({active.initial_size})")
    if config.data.image_size is not None and config.data.image_size < 1:
        raise UserError(
            f"data.image_size must be >= 1 (leave it out for the native size), got {config.data.image_size}"
        )
    if not 0 < config.data.holdout < 1:
        raise UserError(f"data.holdout must be between 0 and 1, got {config.data.holdout}")
    if config.active.reduction not in ("layer_sum", "global"):
        raise UserError(f"active.reduction must be layer_sum or global, got {config.active.reduction!r}")
    if config.model.stem not in ("auto", "cifar", "imagenet"):
        raise UserError(f"model.stem must be auto, cifar or imagenet, got {config.model.stem!r}")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    if not config.active.strategies:
        raise UserError("no strategy given")
    if config.active.embeddings_index and not config.active.embeddings:
        raise UserError("active.embeddings_index maps rows of active.embeddings, which is not set")
    for fraction in [*config.train.milestones, config.train.detach_fraction]:
        if not 0 <= fraction <= 1:
            raise UserError(f"train.milestones and train.detach_fraction are fractions of the epochs, got {fraction}")


def _check_training_numbers(train: TrainConfig) -> None:
    """Optimizer settings that would train on NaN, diverge by construction, or mean nothing."""
    checks = [
        ("train.lr", train.lr, 0 < train.lr < math.inf, "> 0 and finite"),
        ("train.momentum", train.momentum, 0 <= train.momentum < 1, "in [0, 1)"),
        ("train.weight_decay", train.weight_decay, 0 <= train.weight_decay < math.inf, ">= 0 and finite"),
        ("train.gamma", train.gamma, 0 <= train.gamma < math.inf, ">= 0 and finite"),
        ("train.margin", train.margin, 0 <= train.margin < math.inf, ">= 0 and finite"),
        ("train.ranking_weight", train.ranking_weight, 0 <= train.ranking_weight < math.inf, ">= 0 and finite"),
    ]
    for key, value, ok, rule in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            raise UserError(f"{key} must be {rule}, got {value}")


def _check_stop(stop: StopConfig) -> None:
    if stop.set_size < 1 or stop.window < 1:
        raise UserError(f"stop.set_size and stop.window must be >= 1, got {stop.set_size} and {stop.window}")
    if not -1 <= stop.kappa <= 1:
        raise UserError(f"stop.kappa is a Cohen's kappa, in [-1, 1], got {stop.kappa}")
    if not 0 <= stop.uncertainty <= 1:
        raise UserError(f"stop.uncertainty is a normalised entropy, in [0, 1], got {stop.uncertainty}")
    if stop.target is not None and not 0 < stop.target <= 1:
        raise UserError(f"stop.target is an accuracy fraction, in (0, 1], got {stop.target}")


def _check_backbone(config: RunConfig) -> None:
    """model.backbone, model.weights and train.finetune agree (the weights themselves load later)."""
    backbone, finetune = config.model.backbone, config.train.finetune
    if backbone != "resnet18" and backbone != "efficientnet-lite0" and not backbone.startswith("torchvision:"):
        raise UserError(
            f"unknown backbone {backbone!r}; choose one of: resnet18, efficientnet-lite0, torchvision:NAME (a ResNet)"
        )
    if finetune not in ("all", "head", "last"):
        raise UserError(f"train.finetune must be head, last or all, got {finetune!r}")
    if backbone == "resnet18" and config.model.weights not in ("default", "none"):
        raise UserError("resnet18 trains from scratch (model.weights = none); pretrained: efficientnet-lite0")
    if config.model.input_size is not None and not 32 <= config.model.input_size <= 1024:
        raise UserError(f"model.input_size must be 32 to 1024 px (or unset), got {config.model.input_size}")
    if backbone == "resnet18" and config.model.input_size is not None:
        raise UserError("model.input_size sizes a pretrained backbone's input; resnet18 reads data.image_size")
    if backbone == "resnet18" and finetune != "all":
        raise UserError(
            f"train.finetune = {finetune} freezes pretrained weights; resnet18 trains from scratch (all), "
            "a pretrained backbone is e.g. model.backbone = efficientnet-lite0"
        )


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
