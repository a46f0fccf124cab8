"""Strategies registered by name: ``register_strategy``, ``create_strategy``, ``list_strategies``."""

from __future__ import annotations

from typing import Any

from lplgrad.errors import UserError
from lplgrad.strategies.base import Strategy

_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _STRATEGIES and _STRATEGIES[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    _STRATEGIES[cls.name] = cls
    return cls


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    if name not in _STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(list_strategies())}")
    return _STRATEGIES[name]


def create_strategy(name: str, **options: Any) -> Strategy:
    """Instantiate a strategy with ``options``; one it does not take is an error naming those it does."""
    cls = strategy_class(name)
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        valid = ", ".join(cls.options()) or "none"
        raise UserError(f"strategy {name!r} takes no option {', '.join(unknown)}; its options: {valid}")
    return cls(**options)
