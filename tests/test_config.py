import tomllib

import pytest

from lplgrad.config import files as config_files
from lplgrad.config import schema as cfg
from lplgrad.errors import UserError


def test_dataset_defaults_sit_under_user_values() -> None:
    svhn = cfg.resolve({"data.name": "svhn"})
    assert svhn.train.lr == 0.01 and svhn.train.milestones == [0.2]
    cifar = cfg.resolve({"data.name": "cifar10", "train.lr": 0.05})
    assert cifar.train.lr == 0.05 and cifar.train.epochs == 200
    caltech = cfg.resolve({"data.name": "caltech101"})
    assert caltech.train.batch_size == 80 and caltech.train.epochs == 50
    folder = cfg.resolve({"data.name": "imagefolder:/some/where"})
    assert (folder.train.lr, folder.train.schedule, folder.train.min_steps) == (0.05, "cosine", 300)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0.01", 0.01), ("3", 3), ("true", True), ("[0.5, 0.8]", [0.5, 0.8]), ("cifar10", "cifar10"), ("a,b", "a,b")],
)
def test_set_values_parse_as_toml_or_string(raw: str, value: object) -> None:
    assert config_files.parse_set([f"k={raw}"]) == {"k": value}


def test_set_coerces_lists_and_ints_to_floats() -> None:
    config = cfg.resolve(
        config_files.parse_set(["active.strategies=lplgrad,random", "train.lr=1", "train.milestones=0.5"])
    )
    assert config.active.strategies == ["lplgrad", "random"]
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.milestones == [0.5]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train.lrr": 0.1}, "unknown config key 'train.lrr'; valid keys: "),
        ({"train.epochs": 1.5}, "train.epochs expects int"),
        ({"train.epochs": True}, "train.epochs expects int"),
        ({"data.download": "yes"}, "data.download expects bool"),
        ({"active.query_size": 0}, "active.query_size must be >= 1"),
        ({"train.epochs": 0}, "train.epochs must be >= 1"),
        ({"train.batch_size": 1}, "train.batch_size must be >= 2"),
        ({"active.reduction": "max"}, "layer_sum or global"),
        ({"active.budget": 10, "active.initial_size": 20}, "smaller than the initial set"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_values_name_the_problem(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("'", "'")):
        cfg.resolve(values)


def test_malformed_set_item() -> None:
    with pytest.raises(UserError, match="key=value"):
        config_files.parse_set(["train.lr"])


def test_toml_round_trip(tmp_path) -> None:
    config = cfg.resolve({"data.name": "svhn", "active.strategies": ["lplgrad", "random"], "data.root": 'a "b"'})
    path = tmp_path / "config.toml"
    path.write_text(config_files.to_toml(config))
    assert cfg.resolve(config_files.read_toml(path)) == config
    assert tomllib.loads(path.read_text())["train"]["lr"] == 0.01


def test_malformed_or_missing_toml(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = ")
    with pytest.raises(UserError, match="not valid TOML"):
        config_files.read_toml(bad)
    with pytest.raises(UserError, match="does not exist"):
        config_files.read_toml(tmp_path / "missing.toml")


def test_keys_of_earlier_versions_are_mapped_with_a_warning(tmp_path, caplog) -> None:
    old = tmp_path / "config.toml"
    old.write_text("[active]\ninitial = 30\nquery = 10\nsubset = 50\nbudget = 0\n[train]\nepoch_loss = 0.5\n")
    config = cfg.resolve(config_files.read_toml(old))
    assert (config.active.initial_size, config.active.query_size, config.active.candidate_subset) == (30, 10, 50)
    assert config.active.budget is None  # 0 meant "not set"
    assert config.train.detach_fraction == 0.5
    assert "config key active.initial is now active.initial_size" in caplog.text
    assert cfg.resolve(config_files.parse_set(["train.loss_weight=2"])).train.ranking_weight == 2.0
    written = config_files.to_toml(config)
    assert "budget" not in written and "initial_size = 30" in written


def test_every_strategy_option_is_a_checked_config_key(tmp_path) -> None:
    from lplgrad.experiment.runner import make_strategy
    from lplgrad.strategies import list_strategies, strategy_class

    keys = cfg.valid_keys()
    for name in list_strategies():
        for option in strategy_class(name).options():
            assert f"strategy.{name}.{option}" in keys
    config = cfg.resolve(config_files.parse_set(["strategy.bald.passes=50", "strategy.lplgrad.reduction=global"]))
    assert make_strategy("bald", config).passes == 50  # type: ignore[attr-defined]
    assert make_strategy("lplgrad", config).reduction == "global"  # type: ignore[attr-defined]
    assert make_strategy("ent-gradnorm", config).reduction == "layer_sum"  # type: ignore[attr-defined]
    (tmp_path / "run.toml").write_text(config_files.to_toml(config))  # a [strategy.bald] table
    assert "[strategy.bald]" in (tmp_path / "run.toml").read_text()
    assert cfg.resolve(config_files.read_toml(tmp_path / "run.toml")).strategy == config.strategy
    for bad, message in [
        ("strategy.bald.passes=many", "strategy.bald.passes expects int"),
        ("strategy.bald.depth=3", "unknown config key 'strategy.bald.depth'"),
        ("strategy.lplgrad.reduction=frobenius", "must be one of layer_sum, global"),
    ]:
        with pytest.raises(UserError, match=message):
            cfg.resolve(config_files.parse_set([bad]))
