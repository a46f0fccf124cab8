import pytest

from lplgrad.cli.main import main
from lplgrad.config import files as config_files
from lplgrad.config import schema as cfg
from lplgrad.data import dataset_defaults
from lplgrad.errors import UserError

PAPER_METHODS = ["lplgrad", "learning-loss", "entropy", "ent-gradnorm", "coreset", "random"]


@pytest.mark.parametrize("name", config_files.list_presets())
def test_every_preset_parses_and_resolves(name: str) -> None:
    config = cfg.resolve(config_files.read_preset(name))
    assert config.active.strategies == PAPER_METHODS
    assert config.active.budget > config.active.initial_size
    if name != "cifar10-cpu":  # the paper queries B images per round (Table II)
        assert config.active.initial_size == config.active.query_size
    assert config.active.trials == (3 if name == "cifar10-cpu" else 5)


def test_table_ii_values() -> None:
    expected = {
        "cifar10-high": (1000, 25000, 10000),
        "cifar10-low": (500, 5000, 5000),
        "cifar100-high": (2500, 25000, 20000),
        "cifar100-low": (1000, 15000, 8000),
        "svhn-high": (1000, 25000, 10000),
        "svhn-low": (500, 10000, 5000),
        "caltech101-high": (500, 2000, 3500),
        "caltech101-low": (200, 1000, 1400),
        "cdd-high": (500, 1000, 2500),
        "cdd-low": (200, 1000, 1000),
    }
    for name, (initial, subset, budget) in expected.items():
        active = cfg.resolve(config_files.read_preset(name)).active
        assert (active.initial_size, active.candidate_subset, active.budget) == (initial, subset, budget), name
    svhn = cfg.resolve(config_files.read_preset("svhn-high")).train
    assert (svhn.lr, svhn.epochs, svhn.milestones) == (0.01, 200, [0.2])


def test_unknown_preset() -> None:
    with pytest.raises(UserError, match="unknown preset 'cifar11'; choose one of: caltech101-high"):
        config_files.read_preset("cifar11")


def test_presets_command(capsys) -> None:
    assert main(["presets"]) == 0
    assert "cifar10-high" in capsys.readouterr().out.split()


def test_flags_override_a_preset(tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "-q",
        "run",
        "--preset",
        "cifar10-low",
        "--dataset",
        "digits",
        "--strategy",
        "random",
        "--trials",
        "1",
        "--initial",
        "20",
        "--query",
        "10",
        "--budget",
        "30",
        "--subset",
        "100",
        "--epochs",
        "1",
        "--width",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = cfg.resolve(config_files.read_toml(out / "config.toml"))
    assert config.data.name == "digits" and config.active.budget == 30
    assert config.train.lr == 0.1  # the preset's pinned CIFAR learning rate, not the digits default


def test_rounds_flag_wins_over_a_preset_budget() -> None:
    from lplgrad.cli.main import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--preset", "cifar10-high", "--rounds", "1", "--out", "x"])
    active = config_from_args(args).active
    assert (active.rounds, active.budget) == (1, None)
    args = build_parser().parse_args(["run", "--preset", "cifar10-high", "--out", "x"])
    assert config_from_args(args).active.budget == 10000


@pytest.mark.parametrize("name", [n for n in config_files.list_presets() if n != "cifar10-cpu"])
def test_paper_presets_pin_their_datasets_training_settings(name: str) -> None:
    """A paper preset keeps the paper's training settings when its images come from elsewhere,
    e.g. CIFAR-10 as an image folder (which would otherwise take the imagefolder defaults)."""
    from lplgrad.cli.main import build_parser, config_from_args

    values = config_files.read_preset(name)
    paper_keys = ("train.epochs", "train.lr", "train.batch_size", "train.milestones")
    # The paper's CDD settings (Table I) are no image folder's defaults any more; the others are their dataset's.
    cdd = {"train.epochs": 200, "train.lr": 0.01, "train.batch_size": 128, "train.milestones": [0.2]}
    defaults = cdd if name.startswith("cdd") else dataset_defaults(values["data.name"])
    pinned = {k: defaults[k] for k in paper_keys}
    assert {k: values[k] for k in pinned} == pinned
    args = build_parser().parse_args(["run", "--preset", name, "--dataset", "imagefolder:/some/copy", "--out", "x"])
    train = config_from_args(args).train
    assert {f"train.{k}": getattr(train, k) for k in ("epochs", "lr", "batch_size", "milestones")} == pinned
    assert train.min_steps == 0, "the paper trains by epochs; an image folder's step floor must not apply"
    assert train.schedule == "multistep", "the paper's step schedule, not an image folder's cosine"
