"""The trainer: one loop for `torchrec-aes train` and for every retraining inside a search.

EBC on meta -> TorchRec planner -> `DistributedModelParallel` -> `TrainPipelineSparseDist`. The table
optimizer is fused into the backward pass (`apply_optimizer_in_backward`), which also makes the planner
count its state; dense parameters get a regular optimizer, and both sit in one `CombinedOptimizer`.
Validation each epoch with early stopping on val AUC; the best epoch is restored for the test pass.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.dataset import CTRData, Splits, iter_batches, num_batches
from torchrec_aes.io import join
from torchrec_aes.models.ctr import build_ctr_model
from torchrec_aes.planning.memory import attach_table_optimizer
from torchrec_aes.planning.plan import default_sharders, make_topology, plan_model
from torchrec_aes.train.checkpoint import Checkpointer
from torchrec_aes.train.distributed import DistEnv, init_distributed
from torchrec_aes.train.metrics import BinaryMetrics

logger = logging.getLogger(__name__)

DENSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


class CTRTask(nn.Module):
    """Wraps a CTR model for `TrainPipelineSparseDist`: batch -> (loss, (loss, logits, labels))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


class Trainer:
    """Trains and evaluates one CTR architecture, sharded over all ranks.

    Args:
        cfg: the run config (`model`, `train`, `plan` sections are used).
        splits: schema and train/val/test rows (every rank holds all rows and reads its share).
        arch: the tables to train.
        run_dir: where `tb/<tag>` and `checkpoints/<tag>` go ("" = no logs, no checkpoints).
        tag: names this training inside a run (e.g. "final", "retrain_3").
        build_model: optional `ebc -> model` factory (default: `model.type` from the config).

    Example::

        metrics = Trainer(cfg, splits, Architecture.uniform(splits.schema, 16), "runs/x").fit()
        metrics["test"]["auc"]
    """

    def __init__(
        self,
        cfg: Config,
        splits: Splits,
        arch: Architecture,
        run_dir: str = "",
        tag: str = "train",
        build_model: Callable[[EmbeddingBagCollection], nn.Module] | None = None,
    ) -> None:
        self.cfg = cfg
        self.splits = splits
        self.arch = arch
        self.run_dir = run_dir
        self.tag = tag
        self.env: DistEnv = init_distributed()
        self.keys = [n for t in arch.active_tables for n in t.feature_names]
        # Rows restricted once to the active tables' columns (tables with dim 0 are dropped).
        columns = [splits.schema.sparse_names.index(k) for k in self.keys]
        self.data = {
            name: d if len(columns) == d.sparse.shape[1] else CTRData(d.dense, d.sparse[:, columns], d.labels)
            for name, d in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        }
        torch.manual_seed(cfg.train.seed)
        # Tables on meta: nothing is materialised until DMP shards them.
        ebc = EmbeddingBagCollection(tables=arch.to_ebc_configs(), device=torch.device("meta"))
        if build_model is None:
            model = build_ctr_model(cfg.model.type, ebc, splits.schema.num_dense, cfg.model)
        else:
            model = build_model(ebc)
        task = CTRTask(model)
        # Fused into backward, so DMP runs FBGEMM's fused optimizer and the planner counts its state.
        attach_table_optimizer(ebc, cfg.train.embedding_optimizer, cfg.train.embedding_lr)
        topology = make_topology(self.env.world_size, self.env.device.type, cfg.plan.hbm_gb, cfg.plan.ddr_gb)
        self.plan = plan_model(task, arch, topology, cfg.train.batch_size, pg=self.env.pg)
        self.model = DistributedModelParallel(
            task, device=self.env.device, plan=self.plan, sharders=default_sharders()
        )
        dense_cls = DENSE_OPTIMIZERS[cfg.train.dense_optimizer]
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(self.model.named_parameters())),
            lambda params: dense_cls(params, lr=cfg.train.dense_lr, weight_decay=cfg.train.weight_decay),
        )
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, dense])
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device)
        self.writer = SummaryWriter(join(run_dir, "tb", tag)) if run_dir and self.env.is_main else None
        self.checkpointer = (
            Checkpointer(join(run_dir, "checkpoints", tag), self.env.is_main)
            if run_dir and cfg.train.checkpoint
            else None
        )
        self.global_step = 0

    # -----------------------------------------------------------------------------------------------
    def _batches(
        self,
        data: CTRData,
        batch_size: int,
        shuffle: bool,
        seed: int,
        max_batches: int = 0,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        return iter_batches(
            data,
            self.keys,
            batch_size,
            self.env.rank,
            self.env.world_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            max_batches=max_batches,
        )

    def _progress(self, total: int, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            disable=not (self.cfg.train.progress and self.env.is_main),
            leave=False,
            dynamic_ncols=True,
        )

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this rank's share of train; returns (mean train loss on this rank, steps)."""
        tc = self.cfg.train
        self.model.train()
        n = num_batches(len(self.splits.train), tc.batch_size, self.env.world_size, drop_last=True)
        if tc.max_steps:
            n = min(n, tc.max_steps)
        batches = self._batches(self.data["train"], tc.batch_size, True, tc.seed * 1000 + epoch, n, True)
        total, count = 0.0, 0
        with self._progress(n, f"{self.tag} epoch {epoch}") as bar:
            while True:
                try:
                    loss, _, _ = self.pipeline.progress(batches)
                except StopIteration:
                    break
                total += float(loss)
                count += 1
                self.global_step += 1
                bar.update(1)
                if self.writer and self.global_step % tc.log_every == 0:
                    self.writer.add_scalar("train/loss", float(loss), self.global_step)
        # The pipeline swapped the sharded EBC's forward for a pipelined one; restore it so evaluation
        # can call the model directly, and start the next epoch with a fresh pipeline.
        self.pipeline.detach()
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device)
        return total / max(count, 1), count

    @torch.no_grad()
    def evaluate(self, data: CTRData, max_batches: int = 0) -> dict[str, float]:
        """AUC, logloss and NE of the current model on all ranks' shares of `data`."""
        tc = self.cfg.train
        self.model.eval()
        metrics = BinaryMetrics(self.env.world_size, self.env.rank, tc.eval_batch_size, self.env.device)
        for batch in self._batches(data, tc.eval_batch_size, False, 0, max_batches):
            batch = batch.to(self.env.device)
            _, (_, logits, labels) = self.model(batch)
            metrics.update(logits, labels)
        self.model.train()
        return metrics.compute()

    def fit(self) -> dict[str, Any]:
        """Trains with early stopping on val AUC, restores the best epoch, evaluates on test.

        Returns:
            {"val": {...}, "test": {...}, "best_epoch", "epochs_run", "history", "train_seconds",
             "examples_per_second"}.
        """
        tc = self.cfg.train
        state: dict[str, Any] = {
            "epoch": -1,
            "best_epoch": -1,
            "best_auc": -1.0,
            "history": [],
            "train_seconds": 0.0,
            "examples": 0,
        }
        tables = {t.name: [t.num_embeddings, t.embedding_dim] for t in self.arch.active_tables}
        state["tables"] = tables
        if self.checkpointer and (saved := self.checkpointer.state()) is not None:
            if saved.get("tables") != tables:
                raise ValueError(
                    f"{self.checkpointer.directory} holds a checkpoint of another architecture; "
                    "use a new run directory (or delete that checkpoint) to train this one"
                )
            state = saved
            self.checkpointer.load(state["epoch"], self.model, self.optimizer)
            self.global_step = state.get("global_step", 0)
            if self.env.is_main:
                logger.info("resumed %s from epoch %d", self.tag, state["epoch"])
        for epoch in range(state["epoch"] + 1, tc.epochs):
            if epoch - state["best_epoch"] > tc.patience and state["best_epoch"] >= 0:
                break
            start = time.perf_counter()
            train_loss, steps = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            state["train_seconds"] += seconds
            state["examples"] += steps * tc.batch_size * self.env.world_size
            val = self.evaluate(self.data["val"])
            state["history"].append(
                {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
            )
            if self.writer:
                for k, v in val.items():
                    self.writer.add_scalar(f"val/{k}", v, epoch)
                self.writer.add_scalar("train/epoch_loss", train_loss, epoch)
            if val["auc"] > state["best_auc"]:
                state.update(best_epoch=epoch, best_auc=val["auc"], best_val=val)
            state["epoch"] = epoch
            state["global_step"] = self.global_step
            if self.checkpointer:
                self.checkpointer.save(epoch, self.model, self.optimizer, state)
        # Without checkpoints the last epoch is tested (the best one cannot be restored).
        if self.checkpointer and state["best_epoch"] != state["epoch"]:
            self.checkpointer.load(state["best_epoch"], self.model)
        test = self.evaluate(self.data["test"])
        if self.writer:
            for k, v in test.items():
                self.writer.add_scalar(f"test/{k}", v, state["best_epoch"])
            self.writer.flush()
        return {
            "val": state.get("best_val", {}),
            "test": test,
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"] + 1,
            "history": state["history"],
            "train_seconds": state["train_seconds"],
            "examples_per_second": state["examples"] / max(state["train_seconds"], 1e-9),
        }


def dump_metrics(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, indent=1, sort_keys=True)
