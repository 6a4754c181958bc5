"""NASRec's supernet: a `BlockNet` over an elastic TorchRec EBC, trained by the one `Trainer` with a
per-step hook that samples the path (the same on every rank), sets the cosine learning rate and clips the
dense gradients; then the subnet scorer: fixed training and validation slices looked up once through the
sharded tables, every rank holding them and the dense weights, so each rank scores on its own."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_aes.models.block_graph import BlockSpace
from torchrec_aes.models.blocks import BlockNet, subnet_state
from torchrec_aes.models.ctr import TableSpec
from torchrec_aes.search.nasrec.space import Candidate, cost, full_graph, random_graph
from torchrec_aes.supernet.elastic import find_elastic
from torchrec_aes.supernet.sampling import step_generator
from torchrec_aes.supernet.scorer import binary_auc
from torchrec_aes.train.distributed import all_reduce_sum, init_distributed
from torchrec_aes.train.hooks import TrainHooks

SAMPLING_STREAM = 11
PANEL = 4
"""Random paths whose mean validation AUC decides the supernet's best epoch."""


def find_blocknet(model: nn.Module) -> BlockNet:
    found = [m for m in model.modules() if isinstance(m, BlockNet)]
    if len(found) != 1:
        raise ValueError(f"expected one BlockNet in the model, found {len(found)}")
    return found[0]


def cosine_lr(step: int, total: int, warmup: float) -> float:
    """Multiplier of the base learning rate: linear warm-up over `warmup` x total steps, then cosine to 0."""
    ramp = int(warmup * total)
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(total - ramp, 1))))


class SupernetHooks(TrainHooks):
    """Per step: the path (full path with probability falling linearly from 1 to 0 over `warmup_steps`,
    else a random one; dims: the largest on the full path, else random candidates, or `fixed_dims`), the
    learning rate of the dense optimizer (`attach`), and the dense gradients' norm clipped.

    Randomness is a pure function of (seed, step) (`supernet.sampling`), so every rank samples the same
    path with no broadcast, and a resumed run samples what the uninterrupted one would have."""

    def __init__(
        self,
        space: BlockSpace,
        candidates: list[int],
        fixed_dims: list[int] | None,
        seed: int,
        warmup_steps: int,
        total_steps: int,
        lr_warmup: float,
        grad_clip: float,
        task: Any = None,
    ) -> None:
        self.task = task
        self.space, self.candidates, self.fixed_dims, self.seed = space, candidates, fixed_dims, seed
        self.warmup_steps, self.total_steps, self.lr_warmup = warmup_steps, total_steps, lr_warmup
        self.grad_clip = grad_clip
        self.env = init_distributed()
        self.optimizer: torch.optim.Optimizer | None = None
        self.base_lr: list[float] = []

    def on_model(self, dmp: DistributedModelParallel) -> None:
        self.dmp = dmp
        self.net = find_blocknet(dmp)
        self.elastic = find_elastic(dmp)

    def attach(self, optimizer: Any) -> None:
        """The dense optimizer (a TorchRec `KeyedOptimizerWrapper`): learning rate and clipping."""
        inner: torch.optim.Optimizer = optimizer._optimizer
        self.optimizer = inner
        self.base_lr = [g["lr"] for g in inner.param_groups]
        params = [p for g in inner.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            clip = self.grad_clip

            def clip_grads(*_: Any) -> None:
                nn.utils.clip_grad_norm_(params, clip)

            inner.register_step_pre_hook(clip_grads)

    def sample(self, step: int) -> Candidate:
        rng = random.Random(
            int(torch.randint(0, 2**62, (1,), generator=step_generator(self.seed, SAMPLING_STREAM, step)))
        )
        p_full = max(0.0, 1.0 - step / self.warmup_steps) if self.warmup_steps else 0.0
        if rng.random() < p_full:
            dims = self.fixed_dims or [max(self.candidates)] * len(self.elastic.table_names)
            return Candidate(full_graph(rng, self.space), tuple(dims))
        dims = self.fixed_dims or [rng.choice(self.candidates) for _ in self.elastic.table_names]
        return Candidate(random_graph(rng, self.space), tuple(dims))

    def set_candidate(self, cand: Candidate) -> None:
        self.net.set_graph(cand.graph)
        self.elastic.set_dims(list(cand.dims))

    def before_step(self, step: int) -> None:
        cand = self.sample(step)
        self.set_candidate(cand)
        if self.optimizer is not None:
            factor = cosine_lr(step, self.total_steps, self.lr_warmup)
            for g, lr in zip(self.optimizer.param_groups, self.base_lr, strict=True):
                g["lr"] = lr * factor

    def after_step(self, step: int, loss: float) -> float:
        (total,) = all_reduce_sum([loss / self.env.world_size])
        return total

    score_key = "panel_auc"

    def validate(self, epoch: int) -> dict[str, float]:
        """Early stopping on a fixed panel of `PANEL` random paths (their mean validation AUC): a supernet
        past its best epoch scores every subnet worse, not only the path sampled last."""
        assert self.task is not None
        rng = random.Random(self.seed)
        aucs = []
        for _ in range(PANEL):
            dims = self.fixed_dims or [rng.choice(self.candidates) for _ in self.elastic.table_names]
            self.set_candidate(Candidate(random_graph(rng, self.space), tuple(dims)))
            aucs.append(self.task.metrics(self.dmp, self.env, "val")["auc"])
        return {"panel_auc": sum(aucs) / len(aucs)}


class SubnetScorer:
    """Scores candidates with the trained supernet's weights, on one process, memoised by key.

    A score is NASRec's: fine-tune only the final layer (Adagrad, `finetune_steps` batches of
    `finetune_batch` drawn from a fixed training slice), then minus the log loss on a fixed validation
    slice (higher is better). The candidate runs as its fixed model cut from the supernet (`subnet`, equal
    to the supernet's path), once per slice; the fine-tuning is a logistic regression on its output.

    Args:
        space: the search space.
        num_dense: dense features.
        configs: the supernet's tables (at d_max).
        state: the supernet model's state without its tables (`supernet.scorer.dense_state`).
        train_slice, val_slice: (pooled feature -> [N, d_max], dense [N, num_dense], labels [N]).
        finetune_steps, finetune_lr, finetune_batch: the fine-tuning.
        seed: seeds the fine-tuning batches (the same for every candidate).
    """

    def __init__(
        self,
        space: BlockSpace,
        num_dense: int,
        configs: list[EmbeddingBagConfig],
        state: dict[str, torch.Tensor],
        train_slice: tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor],
        val_slice: tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor],
        finetune_steps: int,
        finetune_lr: float,
        finetune_batch: int,
        seed: int,
    ) -> None:
        self.model = BlockNet(TableSpec(configs), num_dense, space, None)  # type: ignore[arg-type]
        self.configs, self.space, self.num_dense = list(configs), space, num_dense
        self.model.load_state_dict(state)
        self.model.eval()
        self.features = [n for c in configs for n in c.feature_names]
        self.train_slice, self.val_slice = train_slice, val_slice
        self.steps, self.lr, self.batch, self.seed = finetune_steps, finetune_lr, finetune_batch, seed
        self.cache: dict[str, dict[str, float]] = {}
        self.evaluations = 0

    def subnet(self, cand: Candidate) -> BlockNet:
        """The fixed model of `cand` with its dense weights cut from the supernet's (`subnet_state`): it
        computes the supernet's output for `cand` exactly, on its own widths and inputs only (several times
        faster than the supernet's masked path)."""
        configs = [replace(c, embedding_dim=d) for c, d in zip(self.configs, cand.dims, strict=True)]
        net = BlockNet(TableSpec(configs), self.num_dense, self.space, cand.graph)  # type: ignore[arg-type]
        net.load_state_dict(subnet_state(self.model, net))
        return net.eval()

    @torch.no_grad()
    def _penultimate(
        self,
        net: BlockNet,
        part: tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor],
        dims: Sequence[int],
    ) -> torch.Tensor:
        pooled, dense, _ = part
        chunks = []
        for start in range(0, len(dense), 8192):
            rows = slice(start, start + 8192)
            per_feature = {name: pooled[name][rows, :d] for name, d in zip(self.features, dims, strict=True)}
            chunks.append(net.penultimate(dense[rows], per_feature))
        return torch.cat(chunks)

    def score(self, cand: Candidate) -> dict[str, float]:
        """{"score": -val logloss, "logloss", "auc"} of `cand` (memoised by `cand.key()`)."""
        key = cand.key()
        if key not in self.cache:
            self.cache[key] = self._score(cand)
        return self.cache[key]

    def _score(self, cand: Candidate) -> dict[str, float]:
        self.evaluations += 1
        net = self.subnet(cand)
        x_train, y_train = self._penultimate(net, self.train_slice, cand.dims), self.train_slice[2]
        x_val, y_val = self._penultimate(net, self.val_slice, cand.dims), self.val_slice[2]
        weight = net.final.weight.detach().clone().requires_grad_(True)
        bias = net.final.bias.detach().clone().requires_grad_(True)
        opt = torch.optim.Adagrad([weight, bias], lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            idx = torch.randint(0, len(x_train), (min(self.batch, len(x_train)),), generator=g)
            loss = F.binary_cross_entropy_with_logits(x_train[idx] @ weight[0] + bias[0], y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = x_val @ weight[0] + bias[0]
            logloss = float(F.binary_cross_entropy_with_logits(logits, y_val))
        return {"score": -logloss, "logloss": logloss, "auc": binary_auc(logits, y_val)}


def split_by_cost(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each item: the costliest first, each to the least loaded rank so far (LPT; ties: the
    lower index and rank), so every rank computes the same split from the same costs."""
    load = [0.0] * world_size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def score_on_ranks(scorer: SubnetScorer, cands: Sequence[Candidate]) -> list[dict[str, float]]:
    """Scores `cands` split over the ranks by estimated cost (`space.cost`; already scored ones cost
    nothing), gathered on every rank in order: the same list as one process would compute, in about
    1/world_size of the time."""
    env = init_distributed()
    costs = [
        0.0 if c.key() in scorer.cache else cost(c, scorer.space, len(scorer.features), scorer.num_dense)
        for c in cands
    ]
    owner = split_by_cost(costs, env.world_size)
    mine = {i: scorer.score(c) for i, c in enumerate(cands) if owner[i] == env.rank}
    if env.world_size > 1:
        parts: list[Any] = [None] * env.world_size
        dist.all_gather_object(parts, mine)
        for part in parts:
            mine.update(part)
            for i, s in part.items():
                scorer.cache.setdefault(cands[i].key(), s)
    return [mine[i] for i in range(len(cands))]
