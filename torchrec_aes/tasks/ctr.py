"""Click-through-rate prediction: BCE on labelled rows; AUC, logloss and NE via `torchrec.metrics`.

The module DMP wraps is `CTRModule` (batch -> (loss, (loss, logits, labels))), the shape
`TrainPipelineSparseDist` expects, so a step is one `progress` of TorchRec's pipeline.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from torchrec_aes.architecture import Architecture, kind_of, pools_tables
from torchrec_aes.config import Config, TrainConfig
from torchrec_aes.data.dataset import MappedRows, Splits, num_batches, rows_digest
from torchrec_aes.data.load import load_data
from torchrec_aes.data.schema import Schema
from torchrec_aes.data.synthetic import load_synthetic
from torchrec_aes.models.ctr import TableSpec, build_ctr_model
from torchrec_aes.models.quantized import served_tables
from torchrec_aes.tasks.base import Task, register_task
from torchrec_aes.train.distributed import DistEnv
from torchrec_aes.train.metrics import BinaryMetrics

DENSE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}

ExtraLoss = Callable[[Batch, torch.Tensor], torch.Tensor | None]


class CTRModule(nn.Module):
    """Wraps a CTR model for `TrainPipelineSparseDist`: batch -> (loss, (loss, logits, labels)).

    Args:
        model: `(dense [B, num_dense], KJT) -> logits [B]`.
        extra_loss: optional `(batch, logits) -> scalar` added to the BCE (regularisers of a search).
    """

    def __init__(self, model: nn.Module, extra_loss: ExtraLoss | None = None) -> None:
        super().__init__()
        self.model = model
        self.extra_loss = extra_loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        if self.extra_loss is not None and self.training:
            extra = self.extra_loss(batch, logits)
            if extra is not None:
                loss = loss + extra
        return loss, (loss.detach(), logits.detach(), batch.labels)


class _PipelineStepper:
    """TorchRec's `TrainPipelineSparseDist` (it zeroes, steps and overlaps input distribution)."""

    def __init__(self, dmp: DistributedModelParallel, optimizer: CombinedOptimizer, device: torch.device):
        self.pipeline = TrainPipelineSparseDist(dmp, optimizer, device)

    def progress(self, batches: Iterator[Batch]) -> float:
        loss, _, _ = self.pipeline.progress(batches)
        return float(loss)

    def detach(self) -> None:
        # The pipeline swapped the sharded EBC's forward for a pipelined one; restore it so evaluation
        # can call the model directly.
        self.pipeline.detach()


def data_cache_dir(cfg: Config) -> str:
    """Where generated data is cached: `data.cache_dir`, else `~/.cache/torchrec_aes`."""
    return cfg.data.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "torchrec_aes")


@register_task
class CTRTask(Task):
    """CTR rows (`Splits`): every rank reads its share of each split (in memory, or streamed).

    `keys` are the features of the architecture being trained (tables with dim 0 drop theirs); set by
    `build`, the rows are restricted to those columns once.
    """

    name = "ctr"
    model_types = ("dlrm", "dcn")
    ebc_path = "model.sparse_arch"
    remaps_ids = True

    data: Splits

    def __init__(self, cfg: Config, data: Splits, planted: list[int] | None = None) -> None:
        super().__init__(cfg, data, planted)
        self.keys = list(data.schema.sparse_names)
        self.rows = {"train": data.train, "val": data.val, "test": data.test}
        self.scores: Any = None  # [2, N] logits and labels of the last test pass (rank 0)
        self.served: dict[str, str] = {}  # tables of the built architecture served quantized (int8/int4)

    @classmethod
    def load(cls, cfg: Config) -> CTRTask:
        if cfg.data.type == "synthetic":
            splits, planted = load_synthetic(cfg.data, data_cache_dir(cfg))
            return cls(cfg, splits, planted)

        return cls(cfg, load_data(cfg.data))

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def content_digest(self) -> str:
        """sha256 of every split's rows as held (in memory: the tensors; streamed: the day files' sampled
        fingerprints; `data.dataset.rows_digest`)."""
        digest = hashlib.sha256()
        for part in (self.data.train, self.data.val, self.data.test):
            digest.update(rows_digest(part).encode())
        return digest.hexdigest()[:16]

    def num_examples(self) -> dict[str, int]:
        return {"train": len(self.data.train), "val": len(self.data.val), "test": len(self.data.test)}

    @property
    def stop_metric(self) -> str:
        return "auc"

    def build(
        self,
        arch: Architecture,
        build_model: Callable[[EmbeddingBagCollection], nn.Module] | None = None,
        extra_loss: ExtraLoss | None = None,
    ) -> tuple[nn.Module, EmbeddingBagCollection]:
        lookup = kind_of(arch).lookup(arch, self)
        self.served = arch.served_types
        if lookup is None:
            self.keys = [n for t in arch.active_tables for n in t.feature_names]
        else:
            self.keys = list(lookup.features)
        columns = [self.schema.sparse_names.index(k) for k in self.keys]
        self.rows = {
            name: d.select(columns)
            for name, d in (("train", self.data.train), ("val", self.data.val), ("test", self.data.test))
        }
        # Tables on meta: nothing is materialised until DMP shards them.
        ebc = EmbeddingBagCollection(
            tables=arch.to_ebc_configs(), is_weighted=self.schema.is_weighted, device=torch.device("meta")
        )
        self.ebc_path = self.ebc_path_for(arch)  # type: ignore[misc]
        if lookup is not None:  # the tables see remapped batches; the model one embedding per feature
            self.rows = {name: MappedRows(rows, lookup.batch) for name, rows in self.rows.items()}
        if build_model is None:
            model = self.model_around(lookup.wrap(ebc) if lookup is not None else ebc)
        else:  # a factory (a supernet) gets the tables and pools them per feature itself
            model = build_model(ebc)
        return CTRModule(model, extra_loss), ebc

    def model_around(self, sparse: nn.Module) -> nn.Module:
        """The task's model around `sparse` (an EBC or anything that looks like one: gated, elastic or
        pooled-per-feature tables): `(dense [B, num_dense], KJT) -> logits [B]`."""
        return build_ctr_model(self.cfg.model.type, sparse, self.schema.num_dense, self.cfg.model)  # type: ignore[arg-type]

    def head(self, configs: list[EmbeddingBagConfig]) -> nn.Module:
        """The task's model over tables it does not look up itself (one group's head of iHAS): called as
        `head.interact(dense [B, num_dense], {feature: pooled [B, d_f]}) -> logits [B]`."""
        return self.model_around(TableSpec(configs))  # type: ignore[arg-type]

    def ebc_path_for(self, arch: Architecture) -> str:
        """`model.sparse_arch`, or `model.sparse_arch.inner` for kinds whose tables the model sees pooled
        per feature (`ArchKind.lookup`: frequency buckets)."""
        return f"{type(self).ebc_path}.inner" if pools_tables(arch) else type(self).ebc_path

    def other_optimizer(self, params: dict[str, torch.Tensor], tc: TrainConfig) -> KeyedOptimizer | None:
        dense_cls = DENSE_OPTIMIZERS[tc.dense_optimizer]
        return KeyedOptimizerWrapper(
            params, lambda p: dense_cls(p, lr=tc.dense_lr, weight_decay=tc.weight_decay)
        )

    def stepper(
        self,
        dmp: DistributedModelParallel,
        optimizer: CombinedOptimizer,
        other: KeyedOptimizer | None,
        env: DistEnv,
    ) -> _PipelineStepper:
        return _PipelineStepper(dmp, optimizer, env.device)

    def steps_per_epoch(self, env: DistEnv) -> int:
        tc = self.cfg.train
        n = num_batches(len(self.data.train), tc.batch_size, env.world_size, drop_last=True)
        return min(n, tc.max_steps) if tc.max_steps else n

    def batches(
        self,
        split: str,
        env: DistEnv,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        steps: int = 0,
    ) -> Iterator[Batch]:
        """This rank's batches of `split` ("train" | "val" | "test") over the architecture's features."""
        return self.rows[split].batches(
            self.keys,
            batch_size,
            env.rank,
            env.world_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=shuffle,
            max_batches=steps,
        )

    def train_batches(self, epoch: int, env: DistEnv, steps: int) -> Iterator[Batch]:
        tc = self.cfg.train
        return self.batches(
            "train", env, tc.batch_size, shuffle=True, seed=tc.seed * 1000 + epoch, steps=steps
        )

    @torch.no_grad()
    def metrics(
        self, dmp: DistributedModelParallel, env: DistEnv, split: str, keep_scores: bool = False
    ) -> dict[str, float]:
        """AUC, logloss and NE of the current model on all ranks' shares of `split`; with `keep_scores`,
        rank 0 also keeps every row's logit and label in `scores` (for paired comparisons of models)."""
        tc = self.cfg.train
        dmp.eval()
        metrics = BinaryMetrics(env.world_size, env.rank, tc.eval_batch_size, env.device)
        limit = {"val": tc.limit_val_batches, "test": tc.limit_test_batches}.get(split, 0)
        for batch in self.batches(split, env, tc.eval_batch_size, steps=limit):
            _, (_, logits, labels) = dmp(batch.to(env.device))
            metrics.update(logits, labels)
        dmp.train()
        if keep_scores:
            local = metrics.scores().cpu()
            if env.world_size > 1:  # every rank holds the same number of rows (`Rows.batches`)
                parts = [torch.empty_like(local) for _ in range(env.world_size)]
                dist.all_gather(parts, local.contiguous())
                local = torch.cat(parts, dim=1)
            self.scores = local.numpy() if env.is_main else None
        return metrics.compute()

    def evaluate(self, dmp: DistributedModelParallel, env: DistEnv) -> tuple[dict[str, float], Any]:
        return self.metrics(dmp, env, "val"), None

    def test(self, dmp: DistributedModelParallel, env: DistEnv, snapshot: Any) -> dict[str, float]:
        """Test metrics of the model as served: tables in int8/int4 are measured through TorchRec's
        quantized lookups (`models/quantized.py`), and the trained model's metrics are kept beside them
        as `trained_<metric>`."""
        if not self.served:
            return self.metrics(dmp, env, "test", keep_scores=True)
        trained = self.metrics(dmp, env, "test")
        with served_tables(dmp, self.served):
            served = self.metrics(dmp, env, "test", keep_scores=True)
        return {**served, **{f"trained_{k}": v for k, v in trained.items()}}

    def test_scores(self) -> Any:
        return self.scores
