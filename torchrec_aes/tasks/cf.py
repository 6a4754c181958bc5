"""Collaborative filtering: BPR on (user, item) pairs; full-ranking Recall@K / NDCG@K.

The CF models (MF, LightGCN; `models/cf.py`) hold the user and item tables in one TorchRec EBC and have no
dense parameters. Tables the planner makes data-parallel are plain parameters whose gradients TorchRec's
DDP inside the lookup averages over ranks; the same table optimizer (class and lr) is stepped on them
after backward. (Sharded tables sum the ranks' gradients instead; Adagrad-type optimizers are nearly
invariant to that scale.)

Data parallelism: every epoch all ranks draw the same seeded permutation of the training (user, item)
pairs and each takes an equal contiguous share; negatives are sampled uniformly per rank (seeded by
seed, epoch and rank) and resampled while they hit one of the user's training items (LightGCN's
sampler). All ranks run the same number of steps, since sharded lookups are collectives.

Loss: BPR, -log sigmoid(s(u, i+) - s(u, i-)) averaged over the batch, plus `train.weight_decay` times
LightGCN's L2 term on the batch's layer-0 rows (0.5 * squared norm / B). The CF models have no dense
weights, so `train.weight_decay` is reused as this coefficient (LightGCN's paper uses 1e-4).

Evaluation: full ranking with training items masked; early stopping on val Recall@20 (or Recall@max K when
20 is not among `train.ranking_k`). The best epoch's user/item matrices are the snapshot that is tested
once at the end, with training and validation items masked. Every rank computes the full matrices (a
collective read of all rows) and ranks an interleaved share of the users; sums are all-reduced, so every
rank returns the same metrics.

With the same seed, 1 process and 2 processes give different (equally valid) runs: table
initialisation depends on the sharding and the pair shares differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config, TrainConfig
from torchrec_aes.data.interactions import CSR, InteractionData, load_interactions
from torchrec_aes.data.schema import Schema
from torchrec_aes.models.cf import build_cf_model
from torchrec_aes.planning.memory import OPTIMIZERS
from torchrec_aes.tasks.base import Task, register_task
from torchrec_aes.train.distributed import DistEnv
from torchrec_aes.train.ranking import evaluate_ranking

CFBatch = tuple[torch.Tensor, torch.Tensor]
"""users [B] and items [B, 2] (positive, negative)."""


def sample_negatives(
    users: torch.Tensor, positives: CSR, num_items: int, generator: torch.Generator, rounds: int = 10
) -> torch.Tensor:
    """Uniform items for `users` [N] that are not among their positives: [N] item ids.

    Resamples the hits up to `rounds` times; a user who has interacted with (almost) every item may keep
    a positive as its negative.
    """
    negatives = torch.randint(num_items, users.shape, generator=generator)
    for _ in range(rounds):
        bad = positives.contains(users, negatives)
        count = int(bad.sum())
        if count == 0:
            break
        negatives[bad] = torch.randint(num_items, (count,), generator=generator)
    return negatives


def bpr_loss(scores: torch.Tensor) -> torch.Tensor:
    """BPR loss of scores [B, 2] (positive, negative): mean of -log sigmoid(s+ - s-)."""
    return -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


class _BPRStepper:
    """One BPR step per batch; fused tables update inside backward, replicated ones are stepped here."""

    def __init__(self, dmp: DistributedModelParallel, replicated: KeyedOptimizer | None, weight_decay: float):
        self.dmp, self.replicated, self.weight_decay = dmp, replicated, weight_decay

    def progress(self, batches: Iterator[CFBatch]) -> float:
        users, items = next(batches)
        scores, ego_l2 = self.dmp(users, items)
        loss = bpr_loss(scores) + self.weight_decay * ego_l2
        loss.backward()
        if self.replicated is not None:
            self.replicated.step()
            self.replicated.zero_grad(set_to_none=True)
        return loss.item()

    def detach(self) -> None:
        pass


@register_task
class CFTask(Task):
    """Interactions (`InteractionData`: per-user train/val/test item lists) for MF and LightGCN."""

    name = "cf"
    model_types = ("mf", "lightgcn")
    ebc_path = "ebc"

    data: InteractionData

    def __init__(self, cfg: Config, data: InteractionData, planted: list[int] | None = None) -> None:
        super().__init__(cfg, data, planted)
        self.pair_users, self.pair_items = data.train.to_pairs()

    @classmethod
    def load(cls, cfg: Config) -> CFTask:
        return cls(cfg, load_interactions(cfg.data))

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def num_examples(self) -> dict[str, int]:
        return {"train": self.data.train.nnz, "val": self.data.val.nnz, "test": self.data.test.nnz}

    def content_digest(self) -> str:
        """sha256 of every split's interactions (CSR offsets and item ids)."""
        digest = hashlib.sha256()
        for part in (self.data.train, self.data.val, self.data.test):
            for t in (part.indptr, part.indices):
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def stop_metric(self) -> str:
        ks = self.cfg.train.ranking_k
        return "recall@20" if 20 in ks else f"recall@{max(ks)}"

    def build(
        self, arch: Architecture, build_model: Any = None, extra_loss: Any = None
    ) -> tuple[nn.Module, EmbeddingBagCollection]:
        if build_model is not None or extra_loss is not None:
            raise ValueError("CF training takes no model factory or extra loss")
        model = build_cf_model(
            self.cfg.model.type, arch, self.data, self.cfg.model.num_layers, torch.device("meta")
        )
        return model, model.ebc

    def after_shard(self, dmp: DistributedModelParallel, env: DistEnv) -> None:
        dmp.module.compute_device = env.device

    def other_optimizer(self, params: dict[str, torch.Tensor], tc: TrainConfig) -> KeyedOptimizer | None:
        # Data-parallel tables use TorchRec's dense kernel: their weights are ordinary parameters that the
        # fused in-backward optimizer does not cover, so the same table optimizer is stepped on them.
        if not params:
            return None
        return KeyedOptimizerWrapper(
            params, lambda p: OPTIMIZERS[tc.embedding_optimizer](p, lr=tc.embedding_lr)
        )

    def stepper(
        self,
        dmp: DistributedModelParallel,
        optimizer: CombinedOptimizer,
        other: KeyedOptimizer | None,
        env: DistEnv,
    ) -> _BPRStepper:
        return _BPRStepper(dmp, other, self.cfg.train.weight_decay)

    def steps_per_epoch(self, env: DistEnv) -> int:
        tc = self.cfg.train
        per_rank = self.pair_users.numel() // env.world_size
        steps = -(-per_rank // tc.batch_size)
        return min(steps, tc.max_steps) if tc.max_steps else steps

    def train_batches(self, epoch: int, env: DistEnv, steps: int) -> Iterator[CFBatch]:
        tc = self.cfg.train
        per_rank = self.pair_users.numel() // env.world_size
        # Same permutation on all ranks (seeded by epoch), then an equal contiguous share per rank.
        order = torch.randperm(
            self.pair_users.numel(), generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch)
        )
        mine = order[env.rank * per_rank : (env.rank + 1) * per_rank]
        users, positives = self.pair_users[mine], self.pair_items[mine]
        gen = torch.Generator().manual_seed((tc.seed * 1000 + epoch) * 1000 + env.rank)
        negatives = sample_negatives(users, self.data.train, self.data.num_items, gen)
        for step in range(steps):
            batch = slice(step * tc.batch_size, (step + 1) * tc.batch_size)
            items = torch.stack([positives[batch], negatives[batch]], dim=1)
            yield users[batch].to(env.device), items.to(env.device)

    @staticmethod
    def _group(env: DistEnv) -> dist.ProcessGroup | None:
        return env.pg if env.world_size > 1 else None

    @torch.no_grad()
    def evaluate(self, dmp: DistributedModelParallel, env: DistEnv) -> tuple[dict[str, float], Any]:
        dmp.eval()
        user_emb, item_emb = dmp.module.final_embeddings()
        ks = list(self.cfg.train.ranking_k)
        metrics = evaluate_ranking(
            user_emb, item_emb, self.data.val, [self.data.train], ks, group=self._group(env)
        )
        dmp.train()
        return metrics, (user_emb, item_emb)

    def test(self, dmp: DistributedModelParallel, env: DistEnv, snapshot: Any) -> dict[str, float]:
        if snapshot is None:
            snapshot = self.evaluate(dmp, env)[1]
        data = self.data
        ks = list(self.cfg.train.ranking_k)
        user_emb, item_emb = snapshot
        return evaluate_ranking(
            user_emb, item_emb, data.test, [data.train, data.val], ks, group=self._group(env)
        )

    def describe(self, plan: ShardingPlan) -> dict[str, Any]:
        tables = plan.plan.get(self.ebc_path, {})
        return {
            "num_users": self.data.num_users,
            "num_items": self.data.num_items,
            "sharding": {name: p.sharding_type for name, p in tables.items()},
        }
