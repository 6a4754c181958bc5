"""The interface every search method implements, and the registry that `search.method` picks from.

A method is a function `SearchContext -> SearchResult`: data, schema, budget and config in; an
`Architecture` and a JSON-able search log out. The budget is enforced in one place, `run_search`
(torchrec_aes/runs.py), which rejects any result over budget by TorchRec's storage estimate.

Example::

    @register("my_method")
    def my_method(ctx: SearchContext) -> SearchResult:
        dims = ...
        return SearchResult(Architecture.from_dims(ctx.schema, dims, method="my_method"), {"steps": 10})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.dataset import Splits
from torchrec_aes.data.interactions import InteractionData
from torchrec_aes.data.schema import Schema
from torchrec_aes.planning.memory import Budget


@dataclass
class SearchContext:
    """What a search gets.

    Args:
        cfg: the run config (`search` section plus whatever the method reads).
        splits: CTR train/val/test rows and the schema (search on train/val only; test is for the final
            report); None for collaborative-filtering data.
        budget: the memory budget the result must meet.
        run_dir: the run directory (for method logs and checkpoints; "" = none).
        planted_ranks: the synthetic generator's true ranks, when known (for logs and reports only).
        interactions: collaborative-filtering data (`data.type=interactions`), else None.
    """

    cfg: Config
    splits: Splits | None
    budget: Budget
    run_dir: str = ""
    planted_ranks: list[int] | None = None
    interactions: InteractionData | None = None

    @property
    def schema(self) -> Schema:
        return self.splits.schema if self.splits is not None else self.interactions.schema

    @property
    def candidates(self) -> list[int]:
        return sorted(self.cfg.search.candidates)


@dataclass
class SearchResult:
    """What a search returns: the architecture and a JSON-able log (written into metrics.json)."""

    arch: Architecture
    log: dict[str, Any] = field(default_factory=dict)


SearchMethod = Callable[[SearchContext], SearchResult]
_METHODS: dict[str, SearchMethod] = {}


def register(name: str) -> Callable[[SearchMethod], SearchMethod]:
    """Registers a search method under `search.method=<name>`."""

    def wrap(fn: SearchMethod) -> SearchMethod:
        if name in _METHODS:
            raise ValueError(f"search method '{name}' is registered twice")
        _METHODS[name] = fn
        return fn

    return wrap


def get_method(name: str) -> SearchMethod:
    """The method registered as `name`, or a ValueError listing the registered ones."""
    import torchrec_aes.search  # noqa: F401  (registers the built-in methods)

    if name not in _METHODS:
        raise ValueError(f"search.method: '{name}' is not one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_names() -> list[str]:
    import torchrec_aes.search  # noqa: F401

    return sorted(_METHODS)
