"""Settings as text: TOML files (presets, --config, a run's config.toml), ``--set key=value``, and the
migration of keys renamed since earlier versions, so old config files and run folders keep working."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from lplgrad.config.compat import migrate
from lplgrad.config.schema import RunConfig, flatten, to_dict
from lplgrad.errors import UserError

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_preset(name: str) -> dict[str, Any]:
    """A shipped preset (``lplgrad presets`` lists them) as dotted keys."""
    if name not in list_presets():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}")
    return read_toml(PRESET_DIR / f"{name}.toml")


def parse_value(raw: str) -> Any:
    """A --set value: TOML syntax when it parses (1, 0.1, true, [0.5, 0.8]), else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_set(items: list[str]) -> dict[str, Any]:
    """['train.lr=0.01', ...] -> {'train.lr': 0.01, ...}."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = parse_value(raw.strip())
    return migrate(values, "--set")


def read_toml(path: Path) -> dict[str, Any]:
    """A config file as dotted keys; a missing or malformed file is a UserError."""
    try:
        with open(path, "rb") as handle:
            return migrate(flatten(tomllib.load(handle)), str(path))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give a .toml file (e.g. DIR/config.toml)") from None
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text (TOML files must be)") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"config file {path} is not valid TOML: {error}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: RunConfig, leave_out: frozenset[str] = frozenset()) -> str:
    """The resolved configuration as TOML that ``read_toml`` reads back; None (not set) and the dotted
    keys in ``leave_out`` are left out. Nested tables (``strategy.<name>``) become [a.b] tables."""
    flat = {k: v for k, v in flatten(to_dict(config)).items() if v is not None and k not in leave_out}
    flat = {k: v for k, v in flat.items() if k.split(".", 1)[0] not in leave_out}
    tables: dict[str, list[str]] = {}
    for key, value in flat.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, []).append(f"{name} = {_toml_value(value)}")
    lines = tables.pop("", [])
    for table, entries in tables.items():
        lines += [f"\n[{table}]", *entries]
    return "\n".join(lines) + "\n"
