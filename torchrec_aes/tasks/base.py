"""The task interface: what is learned and measured on one kind of data.

A `Task` owns the data of a run (CTR rows or CF interactions) and everything the one `Trainer` needs that
depends on it: the model around an architecture's tables, the batches of an epoch, one optimisation step,
and the metrics (with the one that early stopping and model selection use). The trainer itself knows
nothing about CTR or CF.

Example::

    task = get_task(cfg)                 # by data.type: CTRTask or CFTask, data loaded
    result = Trainer(cfg, task, Architecture.uniform(task.schema, 16), "runs/x").fit()
    result["test"][task.stop_metric]
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config, TrainConfig
from torchrec_aes.data.schema import Schema
from torchrec_aes.train.distributed import DistEnv


class Stepper(Protocol):
    """Runs optimisation steps over an iterator of batches (TorchRec's `TrainPipeline` shape)."""

    def progress(self, batches: Iterator[Any]) -> float:
        """One step on the next batch; returns its loss. Raises StopIteration when `batches` is done."""
        ...

    def detach(self) -> None:
        """Restores the model for direct calls (evaluation) after a run of steps."""
        ...


class Task(ABC):
    """What a `Trainer` trains and how it is measured; holds the run's data.

    Subclasses set `name` (what search methods declare support for), `model_types` (allowed `model.type`)
    and `ebc_path` (where the EBC sits in the module DMP wraps: plans in run directories use it).

    Args:
        cfg: the run config (`model`, `train` sections).
        data: the loaded data (see the subclass).
        planted: the synthetic generator's true ranks per table, when known (reports only).
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    ebc_path: ClassVar[str]
    remaps_ids: ClassVar[bool] = False
    """Its `build` feeds architectures whose kind remaps ids (`ArchKind.lookup`: frequency buckets), and
    its training rows give id frequencies."""

    def __init__(self, cfg: Config, data: Any, planted: list[int] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.planted = planted
        # What a method that reads batches itself needs (supernet slices, importance, samples): each
        # split's rows (`data.dataset.Rows`) and the sparse feature names in KJT order. Tasks whose rows
        # are not row batches (CF: per-user interactions) leave them empty.
        self.rows: dict[str, Any] = {}
        self.keys: list[str] = []
        # What is derived from the data once and reused by every training of the run (e.g. id frequencies).
        self.memo: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, cfg: Config) -> Task:
        """Reads `cfg.data` and returns the task holding it."""

    @property
    @abstractmethod
    def schema(self) -> Schema: ...

    @abstractmethod
    def num_examples(self) -> dict[str, int]:
        """Examples per split (rows for CTR, interactions for CF)."""

    def data_fingerprint(self) -> str:
        """A digest of the data's content (not only its shape): saved state of a run on other rows, labels
        or split is refused at start. Computed once per task (`content_digest`); "" when the task cannot
        tell (a user's own loaders)."""
        if "data_fingerprint" not in self.memo:
            self.memo["data_fingerprint"] = self.content_digest()
        return self.memo["data_fingerprint"]

    def content_digest(self) -> str:
        """`data_fingerprint`'s computation (tasks override it)."""
        return ""

    @property
    @abstractmethod
    def stop_metric(self) -> str:
        """The validation metric (higher is better) for early stopping and model selection."""

    # -- model -----------------------------------------------------------------------------------------
    @abstractmethod
    def build(
        self, arch: Architecture, build_model: Any = None, extra_loss: Any = None
    ) -> tuple[nn.Module, EmbeddingBagCollection]:
        """The module DMP wraps (tables on the meta device) and its EBC.

        Args:
            arch: the tables.
            build_model: optional `ebc -> model` factory replacing `model.type` (supernets use it).
            extra_loss: optional `(batch, outputs) -> scalar or None` added to the task's loss in training
                (a search's regularisers).
        """

    def ebc_path_for(self, arch: Architecture) -> str:
        """Where `build(arch)` puts the EBC in the module DMP wraps (plans name their tables by it)."""
        return self.ebc_path

    def collection_paths_for(self, arch: Architecture) -> dict[str, str]:
        """Where `build(arch)` puts the `EmbeddingCollection` of each collection of sequence tables."""
        return {}

    def after_shard(self, dmp: DistributedModelParallel, env: DistEnv) -> None:  # noqa: B027 (optional)
        """Called once DMP has materialised the model (e.g. to tell it its compute device)."""

    @abstractmethod
    def other_optimizer(self, params: dict[str, torch.Tensor], tc: TrainConfig) -> KeyedOptimizer | None:
        """The optimizer of parameters the fused table optimizer does not cover (dense layers, or tables
        the planner made data-parallel), set by the trainer's `tc`, or None if there are none."""

    @abstractmethod
    def stepper(
        self,
        dmp: DistributedModelParallel,
        optimizer: CombinedOptimizer,
        other: KeyedOptimizer | None,
        env: DistEnv,
    ) -> Stepper:
        """A fresh stepper (one per run of steps between evaluations)."""

    # -- batches and metrics ---------------------------------------------------------------------------
    @abstractmethod
    def steps_per_epoch(self, env: DistEnv) -> int:
        """Steps per epoch on every rank (the same on all: sharded lookups are collectives)."""

    @abstractmethod
    def train_batches(self, epoch: int, env: DistEnv, steps: int) -> Iterator[Any]:
        """This rank's `steps` batches of `epoch` (seeded by `train.seed` and the epoch)."""

    @abstractmethod
    def evaluate(self, dmp: DistributedModelParallel, env: DistEnv) -> tuple[dict[str, float], Any]:
        """Validation metrics of the current model on all ranks, and a snapshot for `test` (or None when
        the test pass needs the model itself)."""

    @abstractmethod
    def test(self, dmp: DistributedModelParallel, env: DistEnv, snapshot: Any) -> dict[str, float]:
        """Test metrics of the best epoch: from its snapshot, or (snapshot None) of the current model."""

    def test_scores(self) -> Any:
        """Per-row scores of the last test pass for paired comparisons (rank 0; e.g. CTR: [2, N] logits and
        labels as a numpy array), or None."""
        return None

    def describe(self, plan: ShardingPlan) -> dict[str, Any]:
        """Task-specific fields for the training result."""
        return {}


_TASKS: dict[str, type[Task]] = {}

BUILTIN_TASKS = {"ctr": "torchrec_aes.tasks.ctr", "cf": "torchrec_aes.tasks.cf"}
"""The built-in tasks by name -> the module that registers it (imported by name: this contract never
imports its implementations)."""


def register_task(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls
    return cls


def task_of(cfg: Config) -> type[Task]:
    """The task class for `cfg.data.type` (interaction data is CF, everything else CTR), with its
    `model.type` checked."""
    name = "cf" if cfg.data.type == "interactions" else "ctr"
    for module in BUILTIN_TASKS.values():  # both: a model.type of the other task names it in the error
        importlib.import_module(module)
    cls = _TASKS[name]
    if cfg.model.type not in cls.model_types:
        other = next(t for t in _TASKS.values() if cfg.model.type in t.model_types)
        raise ValueError(
            f"model.type: '{cfg.model.type}' is a {other.name} model, but data.type={cfg.data.type} is "
            f"{cls.name} data (models for it: {', '.join(cls.model_types)})"
        )
    return cls


def get_task(cfg: Config) -> Task:
    """Loads `cfg.data` into its task (CTR or CF)."""
    return task_of(cfg).load(cfg)
