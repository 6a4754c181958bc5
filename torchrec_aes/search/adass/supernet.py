"""AdaS&S stage 1: the supernet, trained by the one `Trainer` with adaptive-sampling hooks.

Every table is held once at the largest candidate in an elastic EBC (`supernet.elastic`), sharded like any
table. The hooks (`AdaptiveSamplingHooks`) set each step's sampled architecture before the step, fold the
all-reduced loss into the sampler after it, measure table importance every `importance_every` steps, and
score each epoch by the mean val-slice AUC of a fixed panel of subnets (`SupernetEvaluator.panel_auc`),
which early stopping maximises; the best epoch's evaluator is what stage 2 scores with.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed.model_parallel import DistributedModelParallel

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.dataset import Rows
from torchrec_aes.models.frequency import block_ends, bucket_key, frequency_architecture, mean_pooled
from torchrec_aes.planning.memory import table_storage
from torchrec_aes.search.adass.config import AdaSSConfig
from torchrec_aes.search.adass.sampler import AdaptiveSampler
from torchrec_aes.search.base import SearchContext
from torchrec_aes.supernet.elastic import build_elastic_model, find_elastic
from torchrec_aes.supernet.scorer import SupernetEvaluator, slice_evaluator
from torchrec_aes.tasks.base import Task
from torchrec_aes.train.distributed import DistEnv, all_reduce_sum, broadcast_object, init_distributed
from torchrec_aes.train.hooks import TrainHooks
from torchrec_aes.train.trainer import Trainer

SHARED_ROW = (0, "fp32")
"""With `search.adass.rows=blocks`, the first option: the block's ids share one row (of dim 4); the
supernet scores it as the block's embedding zeroed."""


def _table_options(ctx: SearchContext) -> list[tuple[int, str]]:
    b = ctx.budget
    pairs = [(d, p) for p in ctx.section.precisions for d in ctx.candidates]
    return sorted(pairs, key=lambda o: (table_storage(1000, o[0], b.optimizer, b.count, o[1]), o[0], o[1]))


def uses_blocks(ctx: SearchContext) -> bool:
    """Whether AdaS&S chooses per frequency block: `rows=blocks`; or `rows=auto` on CTR data read by
    torchrec-aes when no per-table architecture fits (every table at its cheapest option is over budget)."""
    rows = ctx.section.rows
    if rows != "auto":
        return rows == "blocks"
    if not ctx.task.remaps_ids or ctx.schema.has_shared_tables:
        return False
    dim, precision = _table_options(ctx)[0]
    return not ctx.budget.fits(Architecture.uniform(ctx.schema, dim, precision))


def supernet_name(ctx: SearchContext) -> str:
    """The supernet's name in the run directory (`checkpoints/adass/<name>`, `<name>_eval.pt`): one per
    search space, so a budget list whose budgets need both trains both."""
    return "supernet_blocks" if uses_blocks(ctx) else "supernet"


def options(ctx: SearchContext) -> list[tuple[int, str]]:
    """What a table can be: every (candidate dim, precision in `search.adass.precisions`), cheapest first
    by TorchRec's estimate per row (ties: smaller dim first); with blocks (`uses_blocks`), `SHARED_ROW`
    first. Choices index this list."""
    ranked = _table_options(ctx)
    return [SHARED_ROW, *ranked] if uses_blocks(ctx) else ranked


@dataclass
class SearchSpace:
    """What AdaS&S chooses for: one table per feature (or shared table), or (`rows=blocks`) one per
    frequency block; the tables of a user's `EmbeddingCollection` are one choice (one dim for all).

    Args:
        arch: the supernet's tables, each at the largest candidate.
        rows: rows of each table of `arch` (a block's ids).
        groups: with blocks, [(feature, its block keys)]: how blocks pool into features; else None.
        units: the tables (indices into `arch.tables`) of each choice, in the elastic EBC's order
            (`table_names`: the pooled tables, then each collection); None = one choice per table.
    """

    arch: Architecture
    rows: list[int]
    groups: list[tuple[str, list[str]]] | None = None
    units: list[list[int]] | None = None

    @property
    def unit_rows(self) -> list[list[int]]:
        """Rows of each table of each choice."""
        units = self.units or [[i] for i in range(len(self.rows))]
        return [[self.rows[i] for i in unit] for unit in units]

    def architecture(self, choice: Sequence[tuple[int, str]]) -> Architecture:
        """The architecture of one option (dim, precision) per choice; a block's `SHARED_ROW` becomes a
        table of one row at dim 4."""
        per_table = list(choice)
        if self.units is not None:
            per_table = [("", 0)] * len(self.arch.tables)  # type: ignore[list-item]
            for unit, option in zip(self.units, choice, strict=True):
                for i in unit:
                    per_table[i] = option
        tables = [
            dataclasses.replace(t, num_embeddings=1, embedding_dim=4, data_type=p)
            if d == 0
            else dataclasses.replace(t, embedding_dim=d, data_type=p)
            for t, (d, p) in zip(self.arch.tables, per_table, strict=True)
        ]
        return dataclasses.replace(self.arch, tables=tables, method="adass")


def search_space(ctx: SearchContext) -> SearchSpace:
    """AdaS&S's tables for ctx (`search.adass.rows`)."""
    top = max(ctx.candidates)
    if not uses_blocks(ctx):
        arch = Architecture.uniform(ctx.schema, top)
        if not arch.collections:
            return SearchSpace(arch, ctx.schema.table_rows)
        # The pooled tables, then one choice per collection: the elastic EBC's `table_names` order.
        index = {t.name: i for i, t in enumerate(arch.tables)}
        units = [[i] for i, t in enumerate(arch.tables) if not t.collection]
        units += [[index[t.name] for t in tables] for tables in arch.collections.values()]
        return SearchSpace(arch, ctx.schema.table_rows, units=units)
    if ctx.schema.has_sequences:
        raise ValueError(
            "search.adass.rows=blocks: frequency blocks are for CTR data read by torchrec-aes, not the "
            "tables of a user's EmbeddingCollection (search.adass.rows=tables)"
        )
    if ctx.schema.has_shared_tables:
        raise ValueError(
            "search.adass.rows: frequency blocks need one table per feature; with data.shared_tables AdaS&S "
            "searches per table (search.adass.rows=tables)"
        )
    if not ctx.task.remaps_ids:
        raise ValueError(
            "search.adass.rows=blocks needs CTR data read by torchrec-aes (not a user's own model)"
        )
    ends = {f.name: block_ends(f.num_embeddings, ctx.cfg.search.frequency_blocks) for f in ctx.schema.sparse}
    buckets = {f: [(e, e - s, top) for s, e in zip([0, *es[:-1]], es, strict=True)] for f, es in ends.items()}
    arch = frequency_architecture(ctx.schema, buckets, method="adass")
    groups = [(f, [bucket_key(f, k) for k in range(len(es))]) for f, es in ends.items()]
    return SearchSpace(arch, [t.num_embeddings for t in arch.tables], groups)


def model_factory(
    cfg: Config,
    candidates: Sequence[int],
    num_dense: int,
    task: Any = None,
    groups: list[tuple[str, list[str]]] | None = None,
):
    """`lookup -> model`: the run's CTR model around an elastic EBC over `lookup` (AdaS&S's projections;
    with `groups`, the elastic tables pooled per feature), or the task's own supernet model when it has
    one (`supernet_model(lookup, candidates)`: a user's model from the Python API, `tasks/user.py`)."""
    own = getattr(task, "supernet_model", None)
    if own is not None:
        return lambda lookup: own(lookup, candidates)
    shared = cfg.search.adass.shared_projection
    mean = mean_pooled(task.schema) if task is not None else frozenset()

    def build(lookup: nn.Module) -> nn.Module:
        return build_elastic_model(cfg.model, lookup, candidates, num_dense, shared, groups, mean)

    return build


class AdaptiveSamplingHooks(TrainHooks):
    """The supernet's per-step choices, importance measurements and epoch scores (see the module doc).

    Args:
        task: the CTR task (val rows for importance and the scoring slice).
        acfg: AdaS&S's knobs.
        seed: the sampling seed (same on every rank).
        candidates: the options a choice indexes: (dim, data type) pairs, cheapest first.
        build_model: `lookup -> model` for the slice evaluator.
        writer: TensorBoard writer (rank 0) or None.
    """

    score_key = "panel_auc"

    def __init__(
        self,
        task: Task,
        acfg: AdaSSConfig,
        seed: int,
        candidates: Sequence[tuple[int, str]],
        build_model: Any,
        writer: SummaryWriter | None = None,
    ) -> None:
        self.task, self.acfg, self.seed, self.candidates = task, acfg, seed, list(candidates)
        self.build_model, self.writer = build_model, writer
        self.segment_steps = acfg.importance_every
        self.env: DistEnv = init_distributed()
        self.sampler: AdaptiveSampler | None = None
        self.choice: list[int] = []
        self.choices: list[list[int]] = []  # per step, when `record_choices` (tests and logs)
        self.record_choices = False
        self.importance_seconds = 0.0
        self.current: SupernetEvaluator | None = None  # rank 0: the last epoch's evaluator
        self.best: SupernetEvaluator | None = None  # rank 0: the best epoch's, if it ran in this process
        self.best_epoch = -1  # the epoch of `best` (same on every rank)
        self._epoch = -1

    def on_model(self, dmp: DistributedModelParallel) -> None:
        self.model = dmp
        self.elastic = find_elastic(dmp)
        self.sampler = AdaptiveSampler(
            len(self.elastic.table_names), len(self.candidates), self.acfg, self.seed
        )

    def set_choice(self, choice: Sequence[int]) -> None:
        """Candidate index per table (-1 = table zeroed)."""
        self.elastic.set_dims([self.candidates[k][0] if k >= 0 else 0 for k in choice])
        self.elastic.set_half([k >= 0 and self.candidates[k][1] == "fp16" for k in choice])

    def before_step(self, step: int) -> None:
        assert self.sampler is not None
        self.choice = self.sampler.sample(step)
        self.set_choice(self.choice)

    def after_step(self, step: int, loss: float) -> float:
        assert self.sampler is not None
        (global_loss,) = all_reduce_sum([loss / self.env.world_size])
        self.sampler.update_loss(self.choice, step, global_loss)
        if self.record_choices:
            self.choices.append(self.choice)
        return global_loss

    @torch.no_grad()
    def _val_loss(self, data: Rows, choice: Sequence[int]) -> float:
        """Mean BCE over all ranks' shares of `data` with the given choice (-1 = table zeroed)."""
        self.set_choice(choice)
        env = self.env
        total = [0.0, 0.0]
        batch_size = self.task.cfg.train.eval_batch_size
        for batch in data.batches(self.task.keys, batch_size, env.rank, env.world_size):
            _, (_, logits, labels) = self.model(batch.to(env.device))
            total[0] += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
            total[1] += labels.numel()
        s, n = all_reduce_sum(total)
        return s / max(n, 1)

    def measure_importance(self) -> list[float]:
        """Val-loss increase when each table's embedding is zeroed (all others at d_max)."""
        val = self.task.rows["val"]
        data = val.head(self.acfg.importance_rows)
        self.model.eval()
        top = len(self.candidates) - 1
        num_tables = len(self.elastic.table_names)
        base = self._val_loss(data, [top] * num_tables)
        increase = []
        for f in range(num_tables):
            choice = [top] * num_tables
            choice[f] = -1
            increase.append(self._val_loss(data, choice) - base)
        self.model.train()
        return increase

    def between_segments(self, step: int) -> None:
        assert self.sampler is not None
        t0 = time.perf_counter()
        self.sampler.update_importance(self.measure_importance())
        self.importance_seconds += time.perf_counter() - t0
        if self.writer:
            for name, v in zip(self.elastic.table_names, self.sampler.importance.tolist(), strict=True):
                self.writer.add_scalar(f"supernet/importance/{name}", v, step)

    def evaluator(self) -> SupernetEvaluator | None:
        """The fixed val slice looked up through the current supernet (a collective; rank 0 gets it)."""
        val = self.task.rows["val"]
        data = val.head(self.acfg.rl_eval_rows)
        return slice_evaluator(
            self.model,
            data,
            self.task.keys,
            self.task.cfg.train.eval_batch_size,
            self.env,
            self.build_model,
            self.candidates,
        )

    def validate(self, epoch: int) -> dict[str, float]:
        # Early stopping as in the trainer, on a panel of subnets: a supernet past its best epoch scores
        # subnets with overfitted embeddings (on the planted data its train loss falls from 0.57 to 0.14 in
        # four epochs while every subnet's val AUC drops after the second).
        self.current = self.evaluator()
        seed = self.task.cfg.train.seed
        score = broadcast_object(self.current.panel_auc(seed) if self.current is not None else 0.0)
        self._epoch = epoch
        return {"panel_auc": float(score)}

    def on_best(self, dmp: DistributedModelParallel) -> None:
        self.best, self.best_epoch = self.current, self._epoch

    def state_dict(self) -> dict[str, Any]:
        assert self.sampler is not None
        return {"sampler": self.sampler.state_dict(), "importance_seconds": self.importance_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            assert self.sampler is not None
            self.sampler.load_state_dict(state["sampler"])
            self.importance_seconds = state.get("importance_seconds", 0.0)


class SupernetTrainer:
    """Stage 1 on all ranks: the supernet through the `Trainer` with `AdaptiveSamplingHooks`; then the
    evaluator of its best epoch for stage 2 (on rank 0).

    Checkpoints (with `train.checkpoint` and a run directory) go to `checkpoints/adass/supernet/` (with
    frequency blocks, `checkpoints/adass/supernet_blocks/`).

    Args:
        ctx: the search context.
        writer: TensorBoard writer (rank 0) or None.
    """

    def __init__(self, ctx: SearchContext, writer: SummaryWriter | None) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.candidates = ctx.candidates
        task = ctx.task

        space = search_space(ctx)
        self.build_model = model_factory(self.cfg, self.candidates, ctx.schema.num_dense, task, space.groups)
        self.hooks = AdaptiveSamplingHooks(
            task, ctx.section, self.cfg.train.seed, options(ctx), self.build_model, writer
        )
        self.trainer = Trainer(
            self.cfg,
            task,
            space.arch,
            run_dir=ctx.state_dir,
            tag=f"adass/{supernet_name(ctx)}",
            hooks=self.hooks,
            build_model=self.build_model,
        )
        self.model = self.trainer.model
        self.elastic = self.hooks.elastic
        self.best_epoch = -1  # of the last `train`

    @property
    def sampler(self) -> AdaptiveSampler:
        assert self.hooks.sampler is not None
        return self.hooks.sampler

    def train(self) -> dict[str, Any]:
        """Trains the supernet (resuming from the last epoch checkpoint); returns a log."""
        result = self.trainer.fit(epochs=self.ctx.section.supernet_epochs, test=False)
        self.best_epoch = result["best_epoch"]
        names = self.elastic.table_names
        return {
            "steps": result["steps"],
            "seconds": result["wall_seconds"],
            "train_seconds": result["train_seconds"] - self.hooks.importance_seconds,
            "importance_seconds": self.hooks.importance_seconds,
            "best_epoch": result["best_epoch"],
            "history": result["history"],
            "importance": dict(zip(names, self.sampler.importance.tolist(), strict=True)),
            "candidate_probs": dict(zip(names, self.sampler.candidate_probs().tolist(), strict=True)),
        }

    def evaluator(self) -> SupernetEvaluator | None:
        """The evaluator of the best epoch (by `panel_auc`) for stage 2: rank 0 gets it, the other ranks
        None. Collective unless the best epoch's evaluator is in memory."""
        if self.hooks.best_epoch >= 0 and self.hooks.best_epoch == self.best_epoch:
            return self.hooks.best
        if self.trainer.checkpointer and self.best_epoch >= 0:  # resumed after the best epoch
            self.trainer.restore(self.best_epoch)
        return self.hooks.evaluator()

    def close(self) -> None:
        """Frees the sharded model before the final retraining."""
        del self.trainer, self.model, self.elastic
