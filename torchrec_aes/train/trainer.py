"""The trainer: one loop for `torchrec-aes train`, every retraining inside a search, supernet training
and fine-tuning, for every task (CTR, CF).

EBC on meta -> TorchRec planner -> `DistributedModelParallel` -> the task's stepper (for CTR TorchRec's
`TrainPipelineSparseDist`). The table optimizer is fused into the backward pass
(`apply_optimizer_in_backward`), which also makes the planner count its state; parameters it does not
cover get the task's other optimizer, and both sit in one `CombinedOptimizer`.

One early-stopping rule: validate after every epoch; stop when `train.patience` epochs have passed
without a new best of the stop metric (the task's, or the hooks' `score_key`). The best epoch is tested:
from its in-memory snapshot (CF keeps its score matrices), else restored from its checkpoint (with
`train.checkpoint=false` and no snapshot, the last epoch is tested).

Checkpoints (a run directory and `train.checkpoint`): a DCP checkpoint of the model, both optimizers
(their lazy state created first, so a resume is exact) and the loop's state (plus the hooks' state) after
every epoch under `checkpoints/<tag>/`, with checksums of its files and the identity of the run (tables,
seed, data, training config; `train/checkpoint.py`). A rerun with the same run directory resumes after the
last complete epoch; a corrupt latest checkpoint falls back to the previous one; a checkpoint of another
run is refused in one line naming what differs; `train.resume=false` starts fresh.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from torchrec_aes import rundir
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.planning.memory import attach_table_optimizer
from torchrec_aes.planning.plan import default_sharders, make_topology, plan_model
from torchrec_aes.tasks.base import Task
from torchrec_aes.train.checkpoint import Checkpointer, run_identity
from torchrec_aes.train.distributed import DistEnv, init_distributed
from torchrec_aes.train.hooks import NO_HOOKS, TrainHooks

logger = logging.getLogger(__name__)


class Trainer:
    """Trains and evaluates one architecture of a task, sharded over all ranks.

    Args:
        cfg: the run config (`train` and `plan` sections; the task reads `model`).
        task: what is trained and measured, with its data.
        arch: the tables to train.
        run_dir: where `tb/<tag>` and `checkpoints/<tag>` go ("" = no logs, no checkpoints).
        tag: names this training inside a run (e.g. "final", "adass/supernet").
        hooks: per-step and per-epoch extension points (see `TrainHooks`).
        build_model: optional `ebc -> model` factory replacing `model.type` (supernets); else the hooks'
            `make_model`, if they define one (architecture kinds that train as a model of their own).
        sharding_types: restrict the planner to these sharding types (e.g. ["table_wise"]).
        plan: shard with this plan instead of planning (`plan_io.plan_for_job` checks that it fits).

    Example::

        result = Trainer(cfg, task, Architecture.uniform(task.schema, 16), "runs/x").fit()
        result["test"][task.stop_metric]
    """

    def __init__(
        self,
        cfg: Config,
        task: Task,
        arch: Architecture,
        run_dir: str = "",
        tag: str = "train",
        hooks: TrainHooks | None = None,
        build_model: Any = None,
        sharding_types: list[str] | None = None,
        plan: ShardingPlan | None = None,
    ) -> None:
        self.cfg, self.task, self.arch, self.run_dir, self.tag = cfg, task, arch, run_dir, tag
        self.hooks = hooks or NO_HOOKS
        self.env: DistEnv = init_distributed()
        tc = cfg.train
        torch.manual_seed(tc.seed)
        overridden = type(self.hooks).extra_loss is not TrainHooks.extra_loss
        if build_model is None and type(self.hooks).make_model is not TrainHooks.make_model:
            hooks_ = self.hooks
            build_model = lambda ebc: hooks_.make_model(task, ebc)  # noqa: E731
        module, ebc = task.build(arch, build_model, self.hooks.extra_loss if overridden else None)
        in_tables = {id(p) for p in ebc.parameters()}
        self.dense_params = sum(p.numel() for p in module.parameters() if id(p) not in in_tables)
        # Fused into backward, so DMP runs FBGEMM's fused optimizer and the planner counts its state.
        attach_table_optimizer(ebc, tc.embedding_optimizer, tc.embedding_lr)
        topology = make_topology(self.env.world_size, self.env.device.type, cfg.plan.hbm_gb, cfg.plan.ddr_gb)
        self.plan = plan or plan_model(
            module, arch, topology, tc.batch_size, pg=self.env.pg, sharding_types=sharding_types
        )
        precision = None if tc.allreduce_precision == "fp32" else tc.allreduce_precision
        if precision == "bf16" and self.env.device.type != "cuda":
            raise ValueError(
                "train.allreduce_precision (search.nasrec.allreduce_precision for its supernet): bf16 "
                "needs CUDA (NCCL); on CPU use fp16 or fp32"
            )
        self.model = DistributedModelParallel(
            module,
            device=self.env.device,
            plan=self.plan,
            sharders=default_sharders(),
            data_parallel_wrapper=DefaultDataParallelWrapper(allreduce_comm_precision=precision),
        )
        task.after_shard(self.model, self.env)
        self.other = task.other_optimizer(
            dict(in_backward_optimizer_filter(self.model.named_parameters())), tc
        )
        parts = [self.model.fused_optimizer] + ([self.other] if self.other is not None else [])
        self.optimizer = CombinedOptimizer(parts)
        self.hooks.on_model(self.model)
        self.writer = SummaryWriter(rundir.tb_dir(run_dir, tag)) if run_dir and self.env.is_main else None
        self.checkpointer = None
        if run_dir and tc.checkpoint:
            tables = {t.name: [t.num_embeddings, t.embedding_dim] for t in arch.active_tables}
            identity = run_identity(
                tc, cfg.model, task.schema.hash(), task.num_examples(), tables, task.data_fingerprint()
            )
            self.checkpointer = Checkpointer(
                rundir.checkpoint_dir(run_dir, tag), self.env.is_main, identity, resume=tc.resume
            )
        self.global_step = 0
        self.best_snapshot: Any = None

    def _progress(self, total: int, desc: str, initial: int = 0) -> tqdm:
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not (self.cfg.train.progress and self.env.is_main),
            leave=False,
            dynamic_ncols=True,
        )

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this rank's share of train; returns (mean recorded loss, steps)."""
        tc, hooks, env = self.cfg.train, self.hooks, self.env
        steps = self.task.steps_per_epoch(env)
        batches = self.task.train_batches(epoch, env, steps)
        every = hooks.segment_steps
        total, count = 0.0, 0
        with self._progress(steps, f"{self.tag} epoch {epoch}") as bar:
            while True:
                # One stepper per segment: a pipeline replaces the sharded EBC's forward, and what runs
                # between segments (and evaluation) calls the model directly.
                segment = itertools.islice(batches, every - self.global_step % every) if every else batches
                stepper = self.task.stepper(self.model, self.optimizer, self.other, env)
                self.model.train()
                done = 0
                while True:
                    hooks.before_step(self.global_step)
                    try:
                        loss = stepper.progress(segment)
                    except StopIteration:
                        break
                    loss = hooks.after_step(self.global_step, loss)
                    total += loss
                    count += 1
                    done += 1
                    self.global_step += 1
                    bar.update(1)
                    if self.writer and self.global_step % tc.log_every == 0:
                        self.writer.add_scalar("train/loss", loss, self.global_step)
                stepper.detach()
                if not every or done == 0:
                    break
                if self.global_step % every == 0:
                    hooks.between_segments(self.global_step)
        return total / max(count, 1), count

    def restore(self, epoch: int) -> None:
        """Loads the model weights of `epoch` from its checkpoint (it must be kept: the latest or best)."""
        if self.checkpointer is None:
            raise ValueError(f"{self.tag}: no checkpoints to restore epoch {epoch} from")
        self.checkpointer.load(epoch, self.model)

    def fit(self, epochs: int | None = None, test: bool = True) -> dict[str, Any]:
        """Trains with early stopping, then tests the best epoch.

        Args:
            epochs: maximum epochs (default `train.epochs`).
            test: evaluate the best epoch on test (a supernet is not tested; its caller restores it).

        Returns:
            {"val": metrics of the best epoch, "test": its test metrics (if `test`), "best_epoch",
             "epochs_run", "steps", "history" (per epoch: train loss and val metrics), "train_seconds",
             "wall_seconds", "examples_per_second"} plus the task's own fields; the same on every rank.
        """
        start = time.perf_counter()
        tc, task, env, hooks = self.cfg.train, self.task, self.env, self.hooks
        epochs = tc.epochs if epochs is None else epochs
        key = hooks.score_key or task.stop_metric
        state: dict[str, Any] = {
            "epoch": -1,
            "best_epoch": -1,
            "best_score": -float("inf"),
            "best_val": {},
            "history": [],
            "train_seconds": 0.0,
            "examples": 0,
            "global_step": 0,
        }
        # The newest intact checkpoint of this run (corrupt newer ones are skipped; one of another config,
        # data, seed or architecture is refused unless train.resume=false).
        if self.checkpointer and (saved := self.checkpointer.resume()) is not None:
            state = {**state, **saved}
            self.checkpointer.load(state["epoch"], self.model, self.optimizer)
            hooks.load_state_dict(state.get("hooks", {}))
            self.global_step = state["global_step"]
            if env.is_main:
                logger.info("resumed %s after epoch %d", self.tag, state["epoch"])
        snapshot_epoch = -1
        for epoch in range(state["epoch"] + 1, epochs):
            if state["best_epoch"] >= 0 and epoch - state["best_epoch"] > tc.patience:
                break
            t0 = time.perf_counter()
            train_loss, steps = self.train_epoch(epoch)
            state["train_seconds"] += time.perf_counter() - t0
            state["examples"] += steps * tc.batch_size * env.world_size
            custom = hooks.validate(epoch)
            val, snapshot = (custom, None) if custom is not None else task.evaluate(self.model, env)
            state["history"].append(
                {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
            )
            if self.writer:
                self.writer.add_scalar("train/epoch_loss", train_loss, epoch)
                for k, v in val.items():
                    self.writer.add_scalar(f"val/{k}", v, epoch)
            if env.is_main:
                logger.info("%s epoch %d: loss %.4f val %s %.4f", self.tag, epoch, train_loss, key, val[key])
            if val[key] > state["best_score"]:
                state.update(best_epoch=epoch, best_score=val[key], best_val=val)
                self.best_snapshot, snapshot_epoch = snapshot, epoch
                hooks.on_best(self.model)
            state.update(epoch=epoch, global_step=self.global_step, hooks=hooks.state_dict())
            if self.checkpointer:
                self.checkpointer.save(epoch, self.model, self.optimizer, state)
        result: dict[str, Any] = {
            "val": state["best_val"],
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"] + 1,
            "steps": self.global_step,
            "history": state["history"],
            "train_seconds": state["train_seconds"],
            "examples_per_second": state["examples"] / max(state["train_seconds"], 1e-9),
            # The model outside its tables (MLPs, projections, block ops): parameters, fp32 bytes.
            "dense_params": self.dense_params,
            "dense_bytes": 4 * self.dense_params,
            **task.describe(self.plan),
        }
        if test:
            best = state["best_epoch"]
            if self.best_snapshot is None or snapshot_epoch != best:
                # No snapshot of the best epoch in memory (the task keeps none, or it ran before a
                # resume): test the model itself, restored to the best epoch when that is not the last.
                if self.checkpointer and 0 <= best != state["epoch"]:
                    self.restore(best)
                if snapshot_epoch != best and best >= 0:
                    hooks.on_best(self.model)
                self.best_snapshot = None
            result["test"] = task.test(self.model, env, self.best_snapshot)
            scores = task.test_scores()
            if scores is not None and self.run_dir and env.is_main:
                result["test_scores"] = rundir.write_scores(self.run_dir, self.tag, scores)
            if self.writer:
                for k, v in result["test"].items():
                    self.writer.add_scalar(f"test/{k}", v, best)
        if self.writer:
            self.writer.close()
        result["wall_seconds"] = time.perf_counter() - start
        return result
