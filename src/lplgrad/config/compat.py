"""Reading what older lplgrad versions wrote, in one place.

Kept through the 0.x releases and dropped in 1.0 (a folder older than that is then a one-line
error naming the version that still reads it):
- config keys renamed in 0.2, and keys where 0 meant "not set" (``migrate``);
- run checkpoints of 0.1 (``upgrade_checkpoint``: w_aux's weights under "loss_module", one row
  instead of all, weights as two loose state dicts);
- labeling-project model files of 0.2 (``upgrade_model_state``: loose state dicts and fields);
- labeling-project settings written before pretrained backbones (``upgrade_project_settings``).
The CLI's short flag names (``--initial``, ``--query``, ``--subset``) are aliases argparse keeps.
"""

from __future__ import annotations

import logging
from typing import Any

from lplgrad.errors import UserError

log = logging.getLogger(__name__)

# Keys renamed in 0.2, old -> new. Reading an old key maps it to the new one with a warning.
RENAMED_KEYS = {
    "train.epoch_loss": "train.detach_fraction",
    "train.loss_weight": "train.ranking_weight",
    "active.initial": "active.initial_size",
    "active.query": "active.query_size",
    "active.subset": "active.candidate_subset",
    "active.mixed_precision": "active.score_bf16",
    "model.loss_module_hidden": "model.aux_hidden",
}
# Keys where 0 meant "not set" before 0.2; now the key is simply absent (None).
ZERO_MEANT_UNSET = ("active.budget", "data.image_size")
# Keys added in 0.2, with the values that reproduce 0.1's training: a file written by 0.1 (it holds
# renamed keys) gets these, so new dataset defaults never change a run started before them.
ADDED_KEYS = {"train.min_steps": 0, "train.schedule": "multistep", "train.label_smoothing": 0.0}
# The short flags of 0.1, still accepted (argparse aliases): new name -> old names.
FLAG_ALIASES = {"--initial-size": ["--initial"], "--query-size": ["--query"], "--candidate-subset": ["--subset"]}

_warned: set[tuple[str, str]] = set()  # (source, old key): say it once per process


def migrate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Dotted keys of an earlier version mapped to today's names and values (warning once per key).

    A renamed key given together with its new name is an error: which one was meant is unclear.
    A 0 that meant "not set" becomes None, which still overrides a preset's value."""
    migrated: dict[str, Any] = {}
    for key, value in values.items():
        if key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            if new in values:
                raise UserError(f"{source} gives both {key} and {new} (its new name); keep {new}")
            _warn_once(source, key, f"config key {key} is now {new}")
            key = new
        if key in ZERO_MEANT_UNSET and value == 0:
            _warn_once(source, key, f"{key} = 0 meant 'not set'; leave the key out instead")
            value = None
        migrated[key] = value
    if any(key in RENAMED_KEYS for key in values):
        migrated = {**ADDED_KEYS, **migrated}
    return migrated


def _warn_once(source: str, key: str, message: str) -> None:
    if (source, key) not in _warned:
        _warned.add((source, key))
        log.warning("%s: %s", source, message)


def upgrade_project_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A project's config.toml without ``model.backbone`` was made when projects trained ResNet-18
    from scratch: it keeps doing so (today's default, a pretrained head, applies to new projects)."""
    if "model.backbone" in values:
        return values
    return {"model.backbone": "resnet18", "train.finetune": "all", **values}


def upgrade_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A run checkpoint as today's code reads it: ``rows`` (all rows of the pair) and, while the pair
    is not finished, ``weights`` (w_main and w_aux as loose state dicts)."""
    if "rows" not in state:
        state["rows"] = [state["row"]]  # 0.1 kept only the last row
    if "loss_module" in state:
        state["aux_model"] = state.pop("loss_module")  # w_aux's weights, named so in 0.1
    if "model" in state:  # 0.1 and 0.2: the weights as two loose state dicts
        state["weights"] = {"format": None, "model": state.pop("model"), "aux_model": state.pop("aux_model")}
    return state


def upgrade_model_state(state: dict[str, Any]) -> dict[str, Any]:
    """A model file in ``models.model_file``'s format; 0.2 projects saved loose fields."""
    if state.get("format"):
        return state
    try:
        size = int(state["image_size"])
        return {
            "format": "lplgrad-model/1",
            "architecture": {
                "classes": list(state["classes"]),
                "channels": int(state["model"]["stem.0.weight"].shape[1]) if "stem.0.weight" in state["model"] else 3,
                "image_size": size,
                "mean": list(state["mean"]),
                "std": list(state["std"]),
                "width": int(state["width"]),
                "stem": state.get("stem", "cifar" if size <= 64 else "imagenet"),
                "aux_hidden": int(next(iter(state["aux_model"].values())).shape[0]) if state.get("aux_model") else 128,
            },
            "model": state["model"],
            "aux_model": state["aux_model"],
        }
    except (KeyError, TypeError, StopIteration) as error:
        raise UserError(f"not an lplgrad model file (no {error})") from None
