"""The interface every search method implements, and the registry that `search.method` picks from.

A method is a function `SearchContext -> SearchResult`: the task (with its data and schema), the budget,
the config and the method's own config section in; a typed result out. A method declares the tasks it
supports (`ctr`, `cf`), so a mismatch is a one-line error listing the methods that fit. The budget is
enforced in one place, `run_search` (torchrec_aes/runs.py), which rejects any result over budget by
TorchRec's storage estimate.

Example::

    @register("my_method", tasks=("ctr", "cf"))
    def my_method(ctx: SearchContext) -> SearchResult:
        dims = ...
        return SearchResult(Architecture.from_dims(ctx.schema, dims), log={"steps": 10})

Methods live in their own subpackage (`search/<method>/`) with their config section registered through
`torchrec_aes.config.register_section`; docs/design.md "Adding a search method" walks through one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.dataset import Splits
from torchrec_aes.data.interactions import InteractionData
from torchrec_aes.data.schema import Schema
from torchrec_aes.planning.memory import Budget
from torchrec_aes.tasks.base import Task


@dataclass
class SearchContext:
    """What a search gets.

    Args:
        cfg: the run config.
        task: the task and its data (search on train/val only; test is for the final report).
        budget: the memory budget the result must meet.
        run_dir: the run directory (for method state, logs and checkpoints; "" = none).
        section: the method's config section (`search.<section>`), or None if it has none.
        shared_dir: where budget-independent state goes (e.g. a supernet) when one search serves a list of
            budgets: the parent run directory; "" = `run_dir`.
        cache: in-memory state shared by the searches of a budget list (e.g. the trained supernet).
    """

    cfg: Config
    task: Task
    budget: Budget
    run_dir: str = ""
    section: Any = None
    shared_dir: str = ""
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> str:
        """Where budget-independent state goes: `shared_dir`, else `run_dir`."""
        return self.shared_dir or self.run_dir

    @property
    def schema(self) -> Schema:
        return self.task.schema

    @property
    def candidates(self) -> list[int]:
        return sorted(self.cfg.search.candidates)

    @property
    def planted_ranks(self) -> list[int] | None:
        """The synthetic generator's true ranks, when known (for logs and reports only)."""
        return self.task.planted

    @property
    def splits(self) -> Splits:
        """CTR rows (for methods that declare the `ctr` task)."""
        assert isinstance(self.task.data, Splits), "splits: not a CTR task"
        return self.task.data

    @property
    def interactions(self) -> InteractionData:
        """CF interactions (for methods that declare the `cf` task)."""
        assert isinstance(self.task.data, InteractionData), "interactions: not a CF task"
        return self.task.data


@dataclass
class SearchResult:
    """What a search returns.

    Args:
        arch: the architecture found (checked against the budget by `run_search`).
        log: JSON-able search log (written into metrics.json as `search_log`).
        finalists: the method's best architectures (`search.finalists.Finalist`, best first; `arch` is the
            first's), which `run_search` trains from scratch -- with the zero-cost baselines when
            `add_baselines` and `search.final_baselines` -- keeping the best on validation; None:
            `run_search` retrains `arch` (if `search.retrain`).
        add_baselines: whether the baselines join the finalists (False for the baselines themselves).
        landscape: quality vs bytes of the architectures the search scored, for the report's plot
            ({"x", "y", "points": [[bytes, quality]], "named": {label: [bytes, quality]}}), or None.
    """

    arch: Architecture
    log: dict[str, Any] = field(default_factory=dict)
    finalists: list[Any] | None = None
    add_baselines: bool = True
    landscape: dict[str, Any] | None = None


SearchFn = Callable[[SearchContext], SearchResult]
ReportFn = Callable[[str, Architecture, dict[str, Any]], list[str]]
FloorFn = Callable[[SearchContext], tuple[Architecture, str]]


@dataclass(frozen=True)
class SearchMethod:
    """A registered method: its function, the tasks it supports, its config section name and whether it
    searches a user's own model (`search_embedding_dims`)."""

    name: str
    fn: SearchFn
    tasks: tuple[str, ...]
    section: str | None = None
    user_model: bool = False
    report: ReportFn | None = None
    floor: FloorFn | None = None
    shared_tables: bool = False
    sequences: bool = False

    def __call__(self, ctx: SearchContext) -> SearchResult:
        return self.fn(ctx)

    def check_floor(self, ctx: SearchContext) -> None:
        """A one-line ValueError if ctx's budget is below the smallest architecture this method returns,
        or the data has shared tables or sequence tables and the method does not search them."""
        kinds = [
            (
                "shared_tables",
                ctx.schema.has_shared_tables,
                "tables shared by several features (data.shared_tables)",
            ),
            ("sequences", ctx.schema.has_sequences, "the tables of an EmbeddingCollection"),
        ]
        for flag, present, what in kinds:
            if present and not getattr(self, flag):
                _load(BUILTIN_METHODS)
                able = sorted(m.name for m in _METHODS.values() if getattr(m, flag))
                raise ValueError(
                    f"search.method: '{self.name}' does not search {what} yet; methods that do: "
                    f"{', '.join(able)}"
                )
        if self.floor is not None:
            ctx.budget.check_floor(*self.floor(ctx))
        else:
            ctx.budget.check_feasible(ctx.schema, ctx.candidates, ctx.cfg.search.precision)


_METHODS: dict[str, SearchMethod] = {}


def register(
    name: str,
    tasks: tuple[str, ...] = ("ctr", "cf"),
    section: str | None = None,
    user_model: bool = False,
    report: ReportFn | None = None,
    floor: FloorFn | None = None,
    shared_tables: bool = False,
    sequences: bool = False,
) -> Callable[[SearchFn], SearchFn]:
    """Registers a search method under `search.method=<name>`.

    Args:
        name: the method's name.
        tasks: the tasks it supports (`ctr`, `cf`).
        section: its config section (`search.<section>`, registered with `config.register_section`).
        user_model: it searches a user's own model and batches (`torchrec_aes.search_embedding_dims`): it
            needs nothing of the task but its tables, `build` and `Rows` of batches.
        report: `(run_dir, arch, metrics) -> markdown lines`: its section of the run's `report.md`.
        floor: `ctx -> (the smallest architecture it can return, a description)`; a budget below its bytes
            is refused before the search starts, naming them. Default: every table at the smallest
            candidate dim in `search.precision`.
        shared_tables: it searches tables looked up by several features (`data.shared_tables`): one dim per
            table of `Schema.tables`. Other methods refuse such data before they start.
        sequences: it searches the tables of a user's `EmbeddingCollection`s (`TableArch.collection`): one
            dim per collection. Other methods refuse such tables before they start.
    """

    def wrap(fn: SearchFn) -> SearchFn:
        if name in _METHODS:
            raise ValueError(f"search method '{name}' is registered twice")
        _METHODS[name] = SearchMethod(
            name, fn, tuple(tasks), section, user_model, report, floor, shared_tables, sequences
        )
        return fn

    return wrap


def unregister(name: str) -> None:
    """Removes the search method registered as `name` (the counterpart of `register`, e.g. for a method a
    test registers for its own run). Its config section, if any, stays: `config.unregister_section` removes
    it. A ValueError if no method has that name."""
    if name not in _METHODS:
        raise ValueError(f"search method '{name}' is not registered")
    del _METHODS[name]


BUILTIN_METHODS = {
    "uniform": "torchrec_aes.search.baselines",
    "power_rule": "torchrec_aes.search.baselines",
    "mde": "torchrec_aes.search.baselines",
    "hashed": "torchrec_aes.search.baselines",
    "adass": "torchrec_aes.search.adass.search",
    "bet": "torchrec_aes.search.bet.search",
    "bet_su": "torchrec_aes.search.bet.search",
    "bet_sr": "torchrec_aes.search.bet.search",
    "ihas": "torchrec_aes.search.ihas.search",
    "nasrec": "torchrec_aes.search.nasrec.search",
}
"""The built-in methods by name -> the module that registers it: imported by name when first asked for
(torchtitan's way with model names), so this contract never imports a method."""


def _load(names: Iterable[str]) -> None:
    for name in names:
        if name not in _METHODS and name in BUILTIN_METHODS:
            importlib.import_module(BUILTIN_METHODS[name])


def get_method(name: str, task: str | None = None) -> SearchMethod:
    """The method registered as `name`; a ValueError lists the registered ones, or (with `task`) says
    which methods support that task."""
    _load([name])
    if name not in _METHODS:
        raise ValueError(f"search.method: '{name}' is not one of {', '.join(method_names())}")
    method = _METHODS[name]
    if task is not None and task not in method.tasks:
        _load(BUILTIN_METHODS)
        fits = sorted(m.name for m in _METHODS.values() if task in m.tasks)
        raise ValueError(
            f"search.method: '{name}' searches {'/'.join(method.tasks)} data, but this config has {task} "
            f"data (data.type); methods for {task}: {', '.join(fits)}"
        )
    return method


def method_names() -> list[str]:
    """Every method's name (the built-in ones imported first)."""
    _load(BUILTIN_METHODS)
    return sorted(_METHODS)
