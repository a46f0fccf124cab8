"""Query strategies, registered by name. Import order only fills the registry."""

from lplgrad.strategies import (
    badge,
    bald,
    batchbald,
    coreset,
    gradnorm_sampling,
    learning_loss,
    random_sampling,
    typical,
    uncertainty_sampling,
)
from lplgrad.strategies.base import QueryContext, Selection, Strategy, top_k
from lplgrad.strategies.registry import create_strategy, list_strategies, register_strategy, strategy_class

__all__ = [
    "QueryContext",
    "Selection",
    "Strategy",
    "badge",
    "bald",
    "batchbald",
    "coreset",
    "create_strategy",
    "gradnorm_sampling",
    "learning_loss",
    "list_strategies",
    "random_sampling",
    "register_strategy",
    "strategy_class",
    "top_k",
    "typical",
    "uncertainty_sampling",
]
