"""AdaS&S (He Wei et al., arXiv 2411.07504): a one-shot supernet with adaptive sampling, then an RL search.

Stage 1, supernet (`train_supernet`): every table is held once at the largest candidate dim in an
`ElasticEmbeddingBagCollection` and trained through the project's `Trainer` stack (planner -> DMP ->
`TrainPipelineSparseDist`, fused row-wise Adagrad), with no architecture parameters. Each step samples an
architecture (`AdaptiveSampler`):

* per table, a candidate k with p_f(k) = (1 - eps) softmax(z_f / tau) + eps / K, where z_f(k) is the EMA
  train loss of (f, k) relative to the table's mean EMA loss -- under-performing candidates are trained more;
* a fraction rho of the tables, drawn by importance mixed with uniform, use their sampled dim; the others
  use the largest. Importance of a table = EMA of the validation-loss increase when its embedding is
  zeroed, refreshed every `importance_every` steps;
* optionally ("sandwich"), every `sandwich_every` steps one step at all-smallest and one at all-largest.

Choices are a function of (seed, step) and of state that every rank updates with all-reduced values, so all
ranks set the same dims in every step without a broadcast.

After every supernet epoch, a fixed panel of subnets (all-smallest, all-largest, random ones) is scored on
the search's val slice; the supernet stops like the trainer (`train.patience` epochs without improvement,
at most `supernet_epochs`) and stage 2 uses its best epoch. Ours: without it, the planted quickstart's
supernet trained 4 epochs into heavy overfitting (train loss 0.57 -> 0.14) while the trainer's own best
epoch is the second, and the search ranked subnets by how they overfit.

Stage 2, search (`PolicySearch`): a factorised policy (one softmax per table over the candidates),
REINFORCE with a per-table EMA baseline and an entropy bonus. Each update samples J architectures and scores
them on a fixed validation slice with the supernet's weights (no retraining). The pooled embeddings of that
slice do not depend on the architecture (masks come after the lookup), so they are looked up once through
the sharded tables, gathered, and the search runs on rank 0 without collectives (`SupernetEvaluator`; with
DLRM it also computes the dense arch and every (table, candidate) projection of the slice once).
Reward per table (resource competition penalty): r_f = AUC - lambda * F * share_f * max(0, bytes/budget - 1),
share_f = bytes_f / bytes.

Then the budget step (`fit_to_budget`), from the policy's per-table argmax: shrink tables whose shrinking
costs no validation AUC (with `confirm_moves`: at most `shrink_tolerance` on either half); while over budget,
shrink the table with the least AUC loss per byte saved; while a grow fits, grow the table with the most AUC
gain per byte added (if the gain exceeds `min_gain`). The result never exceeds the budget (`Budget.fits`,
TorchRec's storage estimate). With `confirm_moves` (ours, default on) each grow is selected on the even rows
of the val slice and kept only if the odd rows confirm its gain: the best of ~100 moves on one slice was
mostly the luckiest noise. On the planted data below (3 seeds, `min_gain=0.0002`) signal-free tables all got
the smallest dim in 3 of 3 seeds with it, 2 of 3 without; the price is that real gains near the noise are also
left out (val AUC up to 0.0016 lower). The defaults `min_gain=0.0005`, `shrink_tolerance=0.001` come from
replaying stage 2 on the quickstart's supernets (`AdaSSConfig.shrink_tolerance`).

Our details (not in the paper): the loss-relative temperature, the importance measure and its refresh, the
sandwich default, the supernet's early stopping, the advantage normalisation, the free-shrink pass,
any-candidate moves and select-then-confirm halves of the budget step, the AUC on a fixed slice.

DLRM projections: METHODS.md's default is one projection per (table, candidate); `shared_projection=true`
uses one per table whose first d input columns serve candidate d. On small planted data (30k rows, 6 fields,
`tests/unit/test_adass.py`) per-candidate projections of rarely sampled candidates are undertrained, so a
signal-free table's dim changes the val AUC by ~1e-3 and the search got all signal-free tables to the
smallest dim in 1 of 6 seeds; with shared projections (and `min_gain=0.001`) in 6 of 6.

Checkpoints (with `train.checkpoint` and a run directory), so a killed run resumes:

* `checkpoints/adass/supernet/` -- DCP checkpoint of the supernet and sampler state after every epoch
  (deleted once the evaluator below is written: it is the run's largest file and no longer needed);
* `checkpoints/adass/supernet_eval.pt` -- the trained supernet's evaluator (dense weights + the gathered
  validation embeddings), written when stage 1 finishes; with it, a rerun skips stage 1 entirely;
* `checkpoints/adass/rl_state.pt` -- policy, optimizer, baseline and history every `checkpoint_every`
  updates and at the end.

World size: 2 ranks give each step twice the examples of 1 process (per-rank batches), so the supernet's
weights and hence the found architecture can differ from a 1-process run with the same seed; within a run
every rank returns the same architecture (rank 0's, broadcast).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedTensor
from tqdm import tqdm

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import AdaSSConfig, Config
from torchrec_aes.data.dataset import CTRData, iter_batches, num_batches
from torchrec_aes.embedding.elastic import ElasticEmbeddingBagCollection
from torchrec_aes.io import exists, join, load_torch, remove_tree, save_torch_atomic
from torchrec_aes.models.ctr import build_ctr_model
from torchrec_aes.planning.memory import table_storage, warm_cache
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.train.checkpoint import Checkpointer
from torchrec_aes.train.distributed import DistEnv, broadcast_object, init_distributed

logger = logging.getLogger(__name__)


def check_config(acfg: AdaSSConfig) -> None:
    """Raises ValueError naming the `search.adass.*` key of an out-of-range value."""
    rules: dict[str, tuple[float, Callable[[float], bool], str]] = {
        "supernet_epochs": (acfg.supernet_epochs, lambda v: v >= 1, ">= 1"),
        "epsilon": (acfg.epsilon, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "temperature": (acfg.temperature, lambda v: v > 0, "> 0"),
        "loss_ema": (acfg.loss_ema, lambda v: 0 <= v < 1, "in [0, 1)"),
        "sample_fraction": (acfg.sample_fraction, lambda v: 0 < v <= 1, "in (0, 1]"),
        "importance_uniform": (acfg.importance_uniform, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "importance_every": (acfg.importance_every, lambda v: v >= 1, ">= 1"),
        "importance_ema": (acfg.importance_ema, lambda v: 0 <= v < 1, "in [0, 1)"),
        "importance_rows": (acfg.importance_rows, lambda v: v >= 1, ">= 1"),
        "sandwich_every": (acfg.sandwich_every, lambda v: v == 0 or v >= 3, "0 (off) or >= 3"),
        "rl_updates": (acfg.rl_updates, lambda v: v >= 0, ">= 0"),
        "rl_samples": (acfg.rl_samples, lambda v: v >= 1, ">= 1"),
        "rl_lr": (acfg.rl_lr, lambda v: v > 0, "> 0"),
        "rl_entropy": (acfg.rl_entropy, lambda v: v >= 0, ">= 0"),
        "rl_baseline_decay": (acfg.rl_baseline_decay, lambda v: 0 <= v < 1, "in [0, 1)"),
        "rl_eval_rows": (acfg.rl_eval_rows, lambda v: v >= 2, ">= 2"),
        "penalty": (acfg.penalty, lambda v: v >= 0, ">= 0"),
        "min_gain": (acfg.min_gain, lambda v: v >= 0, ">= 0"),
        "shrink_tolerance": (acfg.shrink_tolerance, lambda v: v >= 0, ">= 0"),
        "checkpoint_every": (acfg.checkpoint_every, lambda v: v >= 1, ">= 1"),
    }
    for key, (value, ok, allowed) in rules.items():
        if not ok(value):
            raise ValueError(f"search.adass.{key}: {value} is out of range; allowed: {allowed}")


def _step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """The same generator on every rank for (seed, stream, step): choices need no broadcast."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + step) % (2**63))


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (Mann-Whitney, ties get average ranks) of scores [N] against labels [N] in {0, 1}."""
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # average 1-based rank of each score
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------------------
# Stage 1: supernet with adaptive sampling
# ---------------------------------------------------------------------------------------------------------


def build_supernet_model(
    cfg: Config, lookup: nn.Module, candidates: Sequence[int], num_dense: int
) -> nn.Module:
    """The CTR model of `cfg.model` around an elastic EBC over `lookup` (tables at max(candidates)).

    DLRM: per-(table, candidate) projections to the interaction dim, so the model sees fixed widths. DCN:
    zero padding to max(candidates).
    """
    if cfg.model.type == "dlrm":
        elastic = ElasticEmbeddingBagCollection(
            lookup,
            candidates,
            output_dim=cfg.model.dense_arch[-1],
            shared_projection=cfg.search.adass.shared_projection,
        )
    elif cfg.model.type == "dcn":
        elastic = ElasticEmbeddingBagCollection(lookup, candidates)
    else:
        raise ValueError(f"model.type: search.method=adass supports dlrm and dcn, got '{cfg.model.type}'")
    return build_ctr_model(cfg.model.type, elastic, num_dense, cfg.model)  # type: ignore[arg-type]


def find_elastic(model: nn.Module) -> ElasticEmbeddingBagCollection:
    """The (single) elastic EBC inside `model` (also inside DMP)."""
    found = [m for m in model.modules() if isinstance(m, ElasticEmbeddingBagCollection)]
    if len(found) != 1:
        raise ValueError(f"expected one ElasticEmbeddingBagCollection in the model, found {len(found)}")
    return found[0]


class AdaptiveSampler:
    """Per-step architecture sampling of AdaS&S (see the module docstring).

    Args:
        num_tables: F.
        num_candidates: K (candidate index K - 1 is the largest dim).
        acfg: the knobs.
        seed: shared by all ranks.

    Example::

        sampler = AdaptiveSampler(20, 7, AdaSSConfig(), seed=0)
        choice = sampler.sample(step)          # [F] candidate indices, same on every rank
        sampler.update_loss(choice, step, global_loss)
    """

    def __init__(self, num_tables: int, num_candidates: int, acfg: AdaSSConfig, seed: int) -> None:
        self.num_tables = num_tables
        self.num_candidates = num_candidates
        self.acfg = acfg
        self.seed = seed
        self.loss_ema = torch.full((num_tables, num_candidates), math.nan, dtype=torch.float64)  # [F, K]
        self.importance = torch.ones(num_tables, dtype=torch.float64)  # [F]
        self.importance_measured = False

    def sandwich(self, step: int) -> str | None:
        """ "min" or "max" if `step` is a sandwich step, else None."""
        every = self.acfg.sandwich_every
        if every <= 0:
            return None
        return {every - 2: "min", every - 1: "max"}.get(step % every)

    def candidate_probs(self) -> torch.Tensor:
        """p_f(k) [F, K]: softmax of the relative EMA loss, mixed with uniform."""
        k = self.num_candidates
        ema = self.loss_ema
        seen = ~torch.isnan(ema)
        # Candidates never trained yet count as the table's worst seen one, so they get sampled soon.
        worst = torch.where(seen, ema, torch.full_like(ema, -math.inf)).amax(dim=1, keepdim=True)
        filled = torch.where(seen, ema, worst)
        mean = filled.mean(dim=1, keepdim=True)
        z = (filled - mean) / (self.acfg.temperature * mean.abs().clamp_min(1e-12))
        z = torch.where(seen.any(dim=1, keepdim=True), z, torch.zeros_like(z))
        return (1 - self.acfg.epsilon) * torch.softmax(z, dim=1) + self.acfg.epsilon / k

    def table_probs(self) -> torch.Tensor:
        """[F] probability of each table being among those that use their sampled dim."""
        w = self.importance.clamp_min(0)
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1 / self.num_tables)
        u = self.acfg.importance_uniform
        return (1 - u) * w + u / self.num_tables

    def sample(self, step: int) -> list[int]:
        """The candidate index of every table for `step` (a pure function of the state and the step)."""
        mode = self.sandwich(step)
        if mode is not None:
            return [0 if mode == "min" else self.num_candidates - 1] * self.num_tables
        g = _step_generator(self.seed, 1, step)
        n_sampled = max(1, round(self.acfg.sample_fraction * self.num_tables))
        tables = torch.multinomial(self.table_probs(), n_sampled, replacement=False, generator=g)
        picks = torch.multinomial(self.candidate_probs(), 1, generator=g).squeeze(1)  # [F]
        choice = [self.num_candidates - 1] * self.num_tables
        for f in tables.tolist():
            choice[f] = int(picks[f])
        return choice

    def update_loss(self, choice: Sequence[int], step: int, loss: float) -> None:
        """Folds the step's (global) train loss into the EMA of every (table, used candidate).

        Sandwich steps are skipped: an all-smallest step's high loss says nothing about one table's
        candidate and would only pull sampling towards the smallest dims.
        """
        if self.sandwich(step) is not None or not math.isfinite(loss):
            return
        decay = self.acfg.loss_ema
        for f, k in enumerate(choice):
            old = float(self.loss_ema[f, k])
            self.loss_ema[f, k] = loss if math.isnan(old) else decay * old + (1 - decay) * loss

    def update_importance(self, increase: Sequence[float]) -> None:
        """Folds a measurement of the val-loss increase per zeroed table into the importance EMA."""
        new = torch.tensor(list(increase), dtype=torch.float64)
        if not self.importance_measured:
            self.importance = new
            self.importance_measured = True
        else:
            a = self.acfg.importance_ema
            self.importance = a * self.importance + (1 - a) * new

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (NaN as None)."""
        return {
            "loss_ema": [[None if math.isnan(v) else v for v in row] for row in self.loss_ema.tolist()],
            "importance": self.importance.tolist(),
            "importance_measured": self.importance_measured,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_ema = torch.tensor(
            [[math.nan if v is None else v for v in row] for row in state["loss_ema"]], dtype=torch.float64
        )
        self.importance = torch.tensor(state["importance"], dtype=torch.float64)
        self.importance_measured = bool(state["importance_measured"])


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


class _CachedLookup(nn.Module):
    """Stands in for the EBC under an elastic EBC: returns fixed pooled embeddings, whatever the input."""

    def __init__(self, configs: list[EmbeddingBagConfig], pooled: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._configs = configs
        self.pooled = pooled

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def forward(self, features: Any) -> KeyedTensor:
        keys = [n for c in self._configs for n in c.feature_names]
        return KeyedTensor.from_tensor_list(keys, [self.pooled[k] for k in keys])


class _ChoiceLookup(nn.Module):
    """Stands in for the elastic EBC in the evaluator: every (table, candidate) output on the fixed slice
    is computed once, and a forward only picks the current choice's (no lookup, no projection)."""

    def __init__(
        self,
        configs: list[EmbeddingBagConfig],
        table_of_feature: list[int],
        outputs: list[list[torch.Tensor]],
        width: int,
    ) -> None:
        super().__init__()
        self._configs = configs
        self.keys = [n for c in configs for n in c.feature_names]
        self.table_of_feature = table_of_feature
        self.outputs = outputs  # [feature][candidate] -> [N, width]
        self.zero = torch.zeros_like(outputs[0][0])
        self.width = width
        self.choice: list[int] = []

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def forward(self, features: Any) -> KeyedTensor:
        per_feature = [
            self.outputs[i][k] if (k := self.choice[t]) >= 0 else self.zero
            for i, t in enumerate(self.table_of_feature)
        ]
        return KeyedTensor(
            keys=self.keys,
            length_per_key=[self.width] * len(self.keys),
            values=torch.cat(per_feature, dim=1),
            key_dim=1,
        )


class _Constant(nn.Module):
    """Returns a fixed tensor whatever the input (the dense arch's output on the fixed slice)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Any) -> torch.Tensor:
        return self.value


class SupernetEvaluator:
    """Scores architectures with the trained supernet on a fixed validation slice, on one process.

    With DLRM projections (`output_dim`), what does not depend on the architecture is computed once: the
    dense arch's output and every (table, candidate)'s projected embedding of the slice
    (F * K * N * D floats); a scoring then only runs the interaction and the over arch. This makes the
    RL search several times faster (scorings are most of its time).

    Args:
        cfg: the run config (model section).
        configs: the supernet's tables (at d_max).
        candidates: candidate dims.
        pooled: feature -> [N, d_max] pooled embeddings of the slice (from the sharded tables).
        dense: [N, num_dense] dense features of the slice.
        labels: [N] labels.
        dense_state: state dict of the model without the embedding tables.
    """

    def __init__(
        self,
        cfg: Config,
        configs: list[EmbeddingBagConfig],
        candidates: Sequence[int],
        pooled: dict[str, torch.Tensor],
        dense: torch.Tensor,
        labels: torch.Tensor,
        dense_state: dict[str, torch.Tensor],
    ) -> None:
        self.cfg = cfg
        self.configs = configs
        self.candidates = sorted(candidates)
        self.pooled, self.dense, self.labels, self.dense_state = pooled, dense, labels, dense_state
        self.model = build_supernet_model(
            cfg, _CachedLookup(configs, pooled), self.candidates, dense.shape[1]
        )
        self.model.load_state_dict(dense_state)
        self.model.eval()
        self.elastic = find_elastic(self.model)
        self.table_names = self.elastic.table_names
        self._cache: dict[tuple[int, ...], tuple[float, float, float]] = {}
        self.evaluations = 0
        self._choice_lookup: _ChoiceLookup | None = None
        if self.elastic.output_dim is not None and hasattr(self.model, "dense_arch"):
            self._precompute()

    @torch.no_grad()
    def _precompute(self) -> None:
        """Replaces the elastic EBC and the dense arch by their outputs on the slice (see the class doc)."""
        elastic = self.elastic
        num_tables = len(self.table_names)
        outputs: list[list[torch.Tensor]] = [[] for _ in elastic.feature_names]
        for d in self.candidates:
            elastic.set_dims([d] * num_tables)
            per_feature = elastic(None).to_dict()
            for i, name in enumerate(elastic.feature_names):
                outputs[i].append(per_feature[name].contiguous())
        table_index = {name: t for t, name in enumerate(self.table_names)}
        table_of_feature = [
            table_index[c.name] for c in elastic.embedding_bag_configs() for _ in c.feature_names
        ]
        self._choice_lookup = _ChoiceLookup(
            elastic.embedding_bag_configs(), table_of_feature, outputs, int(elastic.output_dim or 0)
        )
        self.model.sparse_arch = self._choice_lookup
        self.model.dense_arch = _Constant(self.model.dense_arch(self.dense))

    @torch.no_grad()
    def auc(self, choice: Sequence[int]) -> float:
        """Val-slice AUC of the architecture with candidate index `choice[f]` per table (-1 = table zeroed;
        memoised)."""
        return self._scores(choice)[0]

    def half_auc(self, choice: Sequence[int], half: int) -> float:
        """AUC on the even (`half=0`) or odd (`half=1`) rows of the val slice (memoised): two independent
        scorings for the budget step's select-then-confirm moves."""
        return self._scores(choice)[1 + half]

    def _scores(self, choice: Sequence[int]) -> tuple[float, float, float]:
        """(AUC on the slice, on its even rows, on its odd rows) of `choice`; one forward pass."""
        key = tuple(int(k) for k in choice)
        if key not in self._cache:
            if self._choice_lookup is not None:
                self._choice_lookup.choice = list(key)
            else:
                self.elastic.set_dims([self.candidates[k] if k >= 0 else 0 for k in key])
            logits = self.model(self.dense, None)  # [N]
            self._cache[key] = (
                binary_auc(logits, self.labels),
                binary_auc(logits[0::2], self.labels[0::2]),
                binary_auc(logits[1::2], self.labels[1::2]),
            )
            self.evaluations += 1
        return self._cache[key]

    def scored(self) -> list[tuple[tuple[int, ...], tuple[float, float, float]]]:
        """Every architecture scored so far (no table zeroed) with its (AUC, even-half, odd-half AUC)."""
        return [(key, v) for key, v in self._cache.items() if min(key) >= 0]

    def panel_auc(self, seed: int, size: int = 8) -> float:
        """Mean AUC over a fixed panel: all-smallest, all-largest and `size - 2` random architectures.

        How the supernet's epochs are compared (early stopping): the search needs every subnet to be good,
        not only the all-largest one.
        """
        num_tables, k = len(self.table_names), len(self.candidates)
        g = torch.Generator().manual_seed(seed)
        panel = [[0] * num_tables, [k - 1] * num_tables]
        panel += torch.randint(0, k, (max(size - 2, 0), num_tables), generator=g).tolist()
        return sum(self.auc(c) for c in panel) / len(panel)

    def save(self, path: str) -> None:
        save_torch_atomic(
            path,
            {
                "pooled": self.pooled,
                "dense": self.dense,
                "labels": self.labels,
                "dense_state": self.dense_state,
                "candidates": self.candidates,
            },
        )

    @classmethod
    def load(cls, path: str, cfg: Config, configs: list[EmbeddingBagConfig]) -> SupernetEvaluator:
        blob = load_torch(path)
        return cls(
            cfg,
            configs,
            blob["candidates"],
            blob["pooled"],
            blob["dense"],
            blob["labels"],
            blob["dense_state"],
        )


def supernet_configs(ctx: SearchContext) -> list[EmbeddingBagConfig]:
    return Architecture.uniform(ctx.schema, max(ctx.candidates)).to_ebc_configs()


class SupernetTrainer:
    """Stage 1 on all ranks: the supernet through `Trainer` (DMP + TrainPipelineSparseDist) with adaptive
    sampling; then the evaluator for stage 2 (on rank 0).

    Args:
        ctx: the search context.
        writer: TensorBoard writer (rank 0) or None.
        checkpoint_dir: `RUN/checkpoints/adass/supernet` or "" (no checkpoints).
    """

    def __init__(self, ctx: SearchContext, writer: SummaryWriter | None, checkpoint_dir: str = "") -> None:
        from torchrec_aes.train.trainer import Trainer

        self.ctx = ctx
        self.cfg = ctx.cfg
        self.acfg = ctx.cfg.search.adass
        self.env: DistEnv = init_distributed()
        self.candidates = ctx.candidates
        self.writer = writer
        arch = Architecture.uniform(ctx.schema, max(self.candidates))
        num_dense = ctx.schema.num_dense
        self.trainer = Trainer(
            self.cfg,
            ctx.splits,
            arch,
            run_dir="",
            tag="adass_supernet",
            build_model=lambda ebc: build_supernet_model(self.cfg, ebc, self.candidates, num_dense),
        )
        self.model = self.trainer.model
        self.elastic = find_elastic(self.model)
        self.keys = self.trainer.keys
        self.sampler = AdaptiveSampler(
            len(self.elastic.table_names), len(self.candidates), self.acfg, self.cfg.train.seed
        )
        self.checkpointer = Checkpointer(checkpoint_dir, self.env.is_main) if checkpoint_dir else None
        self.choices: list[list[int]] = []  # per step, for tests and logs
        self.record_choices = False
        self.best_epoch = -1  # of the last `train`
        self._best: SupernetEvaluator | None = None  # rank 0: the best epoch's evaluator, if seen here
        self._best_epoch = -1  # the epoch of `_best` (same on every rank)

    def _set_choice(self, choice: Sequence[int]) -> None:
        self.elastic.set_dims([self.candidates[k] if k >= 0 else 0 for k in choice])

    @torch.no_grad()
    def _val_loss(self, data: CTRData, choice: Sequence[int]) -> float:
        """Mean BCE over all ranks' shares of `data` with the given choice (-1 = table zeroed)."""
        self._set_choice(choice)
        total = [0.0, 0.0]
        for batch in iter_batches(
            data, self.keys, self.cfg.train.eval_batch_size, self.env.rank, self.env.world_size
        ):
            _, (_, logits, labels) = self.model(batch.to(self.env.device))
            total[0] += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
            total[1] += labels.numel()
        s, n = _all_reduce_sum(total)
        return s / max(n, 1)

    def measure_importance(self) -> list[float]:
        """Val-loss increase when each table's embedding is zeroed (all others at d_max)."""
        val = self.ctx.splits.val
        data = val.subset(torch.arange(min(self.acfg.importance_rows, len(val))))
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

    def train(self) -> dict[str, Any]:
        """Trains the supernet (resuming from the last epoch checkpoint); returns a log."""
        tc, acfg, env = self.cfg.train, self.acfg, self.env
        steps_per_epoch = num_batches(len(self.ctx.splits.train), tc.batch_size, env.world_size, True)
        if tc.max_steps:
            steps_per_epoch = min(steps_per_epoch, tc.max_steps)
        state: dict[str, Any] = {
            "epoch": -1,
            "step": 0,
            "seconds": 0.0,
            "train_seconds": 0.0,
            "importance_seconds": 0.0,
            "history": [],
            "best_epoch": -1,
            "best_score": -math.inf,
        }
        if self.checkpointer and (saved := self.checkpointer.state()) is not None:
            state = {**state, **saved}
            self.checkpointer.load(state["epoch"], self.model, self.trainer.optimizer)
            self.sampler.load_state_dict(state["sampler"])
            if env.is_main:
                logger.info("adass: resumed the supernet after epoch %d", state["epoch"])
        step = state["step"]
        bar = tqdm(
            total=acfg.supernet_epochs * steps_per_epoch,
            initial=step,
            desc="adass supernet",
            disable=not (tc.progress and env.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for epoch in range(state["epoch"] + 1, acfg.supernet_epochs):
            # Early stopping as in the trainer: a supernet past its best epoch scores subnets with
            # overfitted embeddings (on the planted data its train loss falls from 0.57 to 0.14 in four
            # epochs while every subnet's val AUC drops after the second).
            if state["best_epoch"] >= 0 and epoch - state["best_epoch"] > tc.patience:
                break
            start = time.perf_counter()
            batches = iter_batches(
                self.ctx.splits.train,
                self.keys,
                tc.batch_size,
                env.rank,
                env.world_size,
                shuffle=True,
                seed=tc.seed * 1000 + epoch,
                drop_last=True,
                max_batches=steps_per_epoch,
            )
            losses = []
            while True:
                # One pipeline per chunk between importance refreshes: the pipeline replaces the sharded
                # EBC's forward, and measuring importance calls the model directly.
                chunk = itertools.islice(batches, acfg.importance_every - step % acfg.importance_every)
                t_chunk = time.perf_counter()
                pipeline = TrainPipelineSparseDist(self.model, self.trainer.optimizer, env.device)
                self.model.train()
                done = 0
                while True:
                    choice = self.sampler.sample(step)
                    self._set_choice(choice)
                    try:
                        loss, _, _ = pipeline.progress(chunk)
                    except StopIteration:
                        break
                    (global_loss,) = _all_reduce_sum([float(loss) / env.world_size])
                    self.sampler.update_loss(choice, step, global_loss)
                    if self.record_choices:
                        self.choices.append(choice)
                    losses.append(global_loss)
                    step += 1
                    done += 1
                    bar.update(1)
                    if self.writer and step % tc.log_every == 0:
                        self.writer.add_scalar("supernet/loss", global_loss, step)
                pipeline.detach()
                state["train_seconds"] += time.perf_counter() - t_chunk
                if done == 0:
                    break
                if step % acfg.importance_every == 0:
                    t_importance = time.perf_counter()
                    self.sampler.update_importance(self.measure_importance())
                    state["importance_seconds"] += time.perf_counter() - t_importance
                    if self.writer:
                        importance = self.sampler.importance.tolist()
                        for name, v in zip(self.elastic.table_names, importance, strict=True):
                            self.writer.add_scalar(f"supernet/importance/{name}", v, step)
            # Val score of this epoch's supernet: mean AUC of a fixed panel of subnets on the search's
            # val slice (rank 0 scores, every rank gets the score and takes the same branch).
            evaluator = self._build_evaluator()
            score = float(broadcast_object(evaluator.panel_auc(tc.seed) if evaluator is not None else 0.0))
            if score > state["best_score"]:
                state.update(best_epoch=epoch, best_score=score)
                self._best = evaluator
                self._best_epoch = epoch
            state["seconds"] += time.perf_counter() - start
            state["history"].append(
                {"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1), "val_panel_auc": score}
            )
            state.update(epoch=epoch, step=step, sampler=self.sampler.state_dict())
            if self.checkpointer:
                self.checkpointer.save(epoch, self.model, self.trainer.optimizer, state)
        bar.close()
        self.best_epoch = state["best_epoch"]
        return {
            "steps": step,
            "seconds": state["seconds"],
            "train_seconds": state["train_seconds"],
            "importance_seconds": state["importance_seconds"],
            "best_epoch": state["best_epoch"],
            "history": state["history"],
            "importance": dict(zip(self.elastic.table_names, self.sampler.importance.tolist(), strict=True)),
            "candidate_probs": {
                n: p
                for n, p in zip(
                    self.elastic.table_names, self.sampler.candidate_probs().tolist(), strict=True
                )
            },
        }

    def evaluator(self) -> SupernetEvaluator | None:
        """The evaluator of the best epoch (by `panel_auc`) for stage 2: rank 0 gets it, the other ranks
        None. Collective unless `train` kept the best epoch's evaluator in memory."""
        if self._best_epoch >= 0 and self._best_epoch == self.best_epoch:
            return self._best
        if self.checkpointer and self.best_epoch >= 0:  # resumed after the best epoch: restore its weights
            self.checkpointer.load(self.best_epoch, self.model)
        return self._build_evaluator()

    @torch.no_grad()
    def _build_evaluator(self) -> SupernetEvaluator | None:
        """Looks the fixed val slice up through the sharded tables (all ranks), gathers it; rank 0 gets
        the evaluator, the other ranks None."""
        env = self.env
        val = self.ctx.splits.val
        rows = min(self.acfg.rl_eval_rows, len(val))
        data = val.subset(torch.arange(rows))
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in self.elastic.feature_names}
        for batch in iter_batches(data, self.keys, self.cfg.train.eval_batch_size, env.rank, env.world_size):
            pooled = self.elastic.ebc(batch.sparse_features.to(env.device)).to_dict()
            for n in parts:
                parts[n].append(pooled[n].cpu())
        local = torch.stack([torch.cat(parts[n]) for n in self.elastic.feature_names], dim=1)  # [N_r, F, d]
        if env.world_size > 1:
            gathered = [torch.empty_like(local) for _ in range(env.world_size)]
            dist.all_gather(gathered, local.contiguous())
            local = torch.cat(gathered)  # rank order = row order of iter_batches without shuffling
        n = local.shape[0]
        state = {k: v for k, v in self.model.state_dict().items() if ".ebc." not in k}
        self.model.train()
        if not env.is_main:
            return None
        prefix = "model."
        dense_state = {
            k[len(prefix) :]: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)
        }
        pooled = {name: local[:, i].contiguous() for i, name in enumerate(self.elastic.feature_names)}
        return SupernetEvaluator(
            self.cfg,
            supernet_configs(self.ctx),
            self.candidates,
            pooled,
            data.dense[:n].clone(),
            data.labels[:n].clone(),
            dense_state,
        )

    def close(self) -> None:
        """Frees the sharded model before the final retraining."""
        del self.trainer, self.model, self.elastic


# ---------------------------------------------------------------------------------------------------------
# Stage 2: RL search and the budget step
# ---------------------------------------------------------------------------------------------------------


def fit_to_budget(
    choice: Sequence[int],
    table_bytes: Sequence[Sequence[int]],
    budget: int,
    score: Callable[[list[int]], float],
    min_gain: float = 0.0,
    confirm: Callable[[list[int]], float] | None = None,
    tolerance: float | None = None,
) -> tuple[list[int], list[str]]:
    """The final budget step: the result never costs more than `budget`.

    A move changes one table to any other candidate (not only the next one: a weight-shared supernet can
    score a middle candidate below both neighbours, and one-step moves would stop there).

    1. Free shrink: while some table can take a smaller candidate without lowering the score, make the
       move that saves the most bytes.
    2. While over budget: make the shrink with the least score loss per byte saved.
    3. While a grow fits: make the grow with the most score gain per byte added, if its gain > `min_gain`.

    With `confirm` (ours, see `AdaSSConfig.confirm_moves`), `score` and `confirm` are two independent
    scorings (disjoint halves of the val slice). Each grow is still *selected* on `score` alone, but
    accepted only if `confirm` also shows a gain > `min_gain`; otherwise the next best grow by `score` is
    tried. Why: the best of ~100 moves on one slice is mostly the one with the luckiest noise, so grows
    worth less than the noise won and left signal-free tables above the smallest dim; an independent
    half carries no selection bias. A shrink is free if neither half loses more than `min_gain` (the
    scale below which a difference counts as noise), and forced shrinks (step 2) use the sum of both
    halves' scores, since one is made anyway and more rows rank them better.

    Args:
        choice: candidate index per table to start from.
        table_bytes: [F][K] cost of table f at candidate k, increasing in k.
        budget: the budget in the same unit.
        score: architecture (candidate index per table) -> quality, higher is better (e.g. val AUC).
        min_gain: smallest score gain a grow must bring (on both scorings with `confirm`).
        confirm: a second, independent scoring of the same quality, or None (select and accept on `score`).
        tolerance: with `confirm`, the largest loss (on either half) a free shrink may cost; default
            `min_gain`.

    Returns:
        The final choice and a log of the moves ("shrink <table index> -> <candidate index>", ...).

    Raises:
        ValueError: even every table at its smallest candidate is over the budget.
    """
    cur = [int(k) for k in choice]
    smallest = sum(row[0] for row in table_bytes)
    if smallest > budget:
        raise ValueError(f"budget {budget} is below the smallest architecture ({smallest})")
    moves: list[str] = []

    def scores(c: list[int]) -> tuple[float, float]:
        """(selection score, confirmation score); without `confirm` both are `score`."""
        s = score(c)
        return s, (confirm(c) if confirm is not None else s)

    cur_score = scores(cur)

    def options(smaller: bool) -> list[tuple[int, int, int, list[int], tuple[float, float]]]:
        """(f, k, bytes changed, choice, scores) of every move of one table to a smaller/larger candidate."""
        out = []
        for f, k_cur in enumerate(cur):
            ks = range(k_cur) if smaller else range(k_cur + 1, len(table_bytes[f]))
            for k in ks:
                c = list(cur)
                c[f] = k
                out.append((f, k, abs(table_bytes[f][k] - table_bytes[f][k_cur]), c, scores(c)))
        return out

    def cost(c: list[int]) -> int:
        return sum(table_bytes[f][k] for f, k in enumerate(c))

    def is_free(s: tuple[float, float]) -> bool:
        if confirm is None:
            return s[0] >= cur_score[0]
        tol = min_gain if tolerance is None else tolerance
        return s[0] >= cur_score[0] - tol and s[1] >= cur_score[1] - tol

    while True:  # 1. free shrink
        free = [o for o in options(smaller=True) if is_free(o[4])]
        if not free:
            break
        f, k, _, cur, cur_score = max(free, key=lambda o: (o[2], o[4][0] + o[4][1]))
        moves.append(f"free-shrink {f} -> {k}")
    while cost(cur) > budget:  # 2. shrink while over budget
        f, k, _, cur, cur_score = min(
            options(smaller=True),
            key=lambda o: (cur_score[0] + cur_score[1] - o[4][0] - o[4][1]) / max(o[2], 1),
        )
        moves.append(f"shrink {f} -> {k}")
    while True:  # 3. grow while there is slack
        total = cost(cur)
        grows = [
            o for o in options(smaller=False) if total + o[2] <= budget and o[4][0] - cur_score[0] > min_gain
        ]
        grows.sort(key=lambda o: -(o[4][0] - cur_score[0]) / max(o[2], 1))
        confirmed = next((o for o in grows if o[4][1] - cur_score[1] > min_gain), None)
        if confirmed is None:
            break
        f, k, _, cur, cur_score = confirmed
        moves.append(f"grow {f} -> {k}")
    return cur, moves


class PolicySearch:
    """REINFORCE over a factorised per-table softmax policy, with the resource competition penalty.

    Args:
        score: architecture (candidate index per table) -> val AUC with supernet weights.
        table_bytes: [F][K] bytes of table f at candidate k.
        budget: budget bytes.
        acfg: the knobs (rl_*, penalty).
        seed: sampling seed.
        writer: TensorBoard writer or None.
        state_path: where the RL state is saved ("" = nowhere); an existing one is resumed.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        score: Callable[[list[int]], float],
        table_bytes: Sequence[Sequence[int]],
        budget: int,
        acfg: AdaSSConfig,
        seed: int,
        writer: SummaryWriter | None = None,
        state_path: str = "",
        progress: bool = False,
    ) -> None:
        self.score = score
        self.bytes = torch.tensor(table_bytes, dtype=torch.float64)  # [F, K]
        self.budget = budget
        self.acfg = acfg
        self.seed = seed
        self.writer = writer
        self.state_path = state_path
        self.progress = progress
        num_tables, k = self.bytes.shape
        self.logits = torch.zeros(num_tables, k, requires_grad=True)  # [F, K]
        self.optimizer = torch.optim.Adam([self.logits], lr=acfg.rl_lr)
        self.baseline: torch.Tensor | None = None  # [F]
        self.update = 0
        self.history: list[dict[str, float]] = []
        if state_path and exists(state_path):
            self._load()

    def _save(self) -> None:
        save_torch_atomic(
            self.state_path,
            {
                "logits": self.logits.detach(),
                "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline,
                "update": self.update,
                "history": self.history,
            },
        )

    def _load(self) -> None:
        blob = load_torch(self.state_path)
        with torch.no_grad():
            self.logits.copy_(blob["logits"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.baseline, self.update, self.history = blob["baseline"], blob["update"], blob["history"]
        logger.info("adass: resumed the RL search at update %d", self.update)

    def rewards(self, choices: torch.Tensor, aucs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-table rewards [J, F] and total bytes [J] of choices [J, F] with AUCs [J]."""
        per_table = self.bytes.gather(1, choices.t()).t()  # [J, F]
        total = per_table.sum(1)  # [J]
        over = (total / self.budget - 1).clamp_min(0)  # [J]
        share = per_table / total[:, None]
        num_tables = choices.shape[1]
        return aucs[:, None] - self.acfg.penalty * num_tables * share * over[:, None], total

    def run(self) -> list[int]:
        """Runs the remaining updates; returns the policy's per-table argmax."""
        acfg = self.acfg
        bar = tqdm(
            total=acfg.rl_updates,
            initial=self.update,
            desc="adass RL",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        while self.update < acfg.rl_updates:
            g = _step_generator(self.seed, 2, self.update)
            probs = torch.softmax(self.logits.detach(), dim=1)  # [F, K]
            choices = torch.multinomial(probs, acfg.rl_samples, replacement=True, generator=g).t()  # [J, F]
            aucs = torch.tensor([self.score(c.tolist()) for c in choices], dtype=torch.float64)
            rewards, total = self.rewards(choices, aucs)  # [J, F], [J]
            if self.baseline is None:
                self.baseline = rewards.mean(0)
            advantage = rewards - self.baseline[None, :]
            # Normalised: AUC differences between architectures are ~1e-3, penalties up to ~1.
            advantage = advantage / (advantage.std() + 1e-6) if advantage.numel() > 1 else advantage
            self.baseline = acfg.rl_baseline_decay * self.baseline + (
                1 - acfg.rl_baseline_decay
            ) * rewards.mean(0)
            log_p = torch.log_softmax(self.logits, dim=1)  # [F, K]
            chosen = log_p.gather(1, choices.t()).t()  # [J, F]
            entropy = -(log_p.exp() * log_p).sum(1)  # [F]
            loss = -(advantage.float() * chosen).mean(0).sum() - acfg.rl_entropy * entropy.sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.update += 1
            row = {
                "update": self.update,
                "entropy": float(entropy.detach().mean()),
                "auc_mean": float(aucs.mean()),
                "auc_max": float(aucs.max()),
                "bytes_mean": float(total.mean()),
                "over_budget": float((total > self.budget).double().mean()),
            }
            self.history.append(row)
            if self.writer:
                for k, v in row.items():
                    if k != "update":
                        self.writer.add_scalar(f"rl/{k}", v, self.update)
            bar.update(1)
            if self.state_path and (
                self.update % acfg.checkpoint_every == 0 or self.update == acfg.rl_updates
            ):
                self._save()
        bar.close()
        return self.logits.detach().argmax(dim=1).tolist()


# ---------------------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------------------


def candidate_bytes(ctx: SearchContext) -> list[list[int]]:
    """[F][K] cost of each table at each candidate, in the budget's unit (TorchRec's estimate, cached)."""
    b = ctx.budget
    rows = [f.num_embeddings for f in ctx.schema.sparse]
    if b.count == "bytes":
        warm_cache(rows, ctx.candidates, b.optimizer)
    return [[table_storage(r, d, b.optimizer, b.count) for d in ctx.candidates] for r in rows]


@register("adass")
def adass(ctx: SearchContext) -> SearchResult:
    """AdaS&S: supernet with adaptive sampling -> REINFORCE with resource competition -> budget step."""
    cfg, acfg = ctx.cfg, ctx.cfg.search.adass
    check_config(acfg)
    env = init_distributed()
    start = time.perf_counter()
    ckpt_dir = join(ctx.run_dir, "checkpoints", "adass") if ctx.run_dir and cfg.train.checkpoint else ""
    eval_path = join(ckpt_dir, "supernet_eval.pt") if ckpt_dir else ""
    writer = SummaryWriter(join(ctx.run_dir, "tb", "adass")) if ctx.run_dir and env.is_main else None
    log: dict[str, Any] = {}
    # Rank 0 decides, so every rank takes the same branch (the run directory may be rank 0's only).
    resume = bool(broadcast_object(bool(eval_path) and env.is_main and exists(eval_path)))
    if resume:
        evaluator = SupernetEvaluator.load(eval_path, cfg, supernet_configs(ctx)) if env.is_main else None
        log["supernet"] = {"resumed": True}
    else:
        supernet = SupernetTrainer(ctx, writer, join(ckpt_dir, "supernet") if ckpt_dir else "")
        log["supernet"] = supernet.train()
        evaluator = supernet.evaluator()
        supernet.close()
        if evaluator is not None and eval_path:
            evaluator.save(eval_path)
            # A resume starts from the evaluator from now on; the supernet's DCP checkpoint (every table
            # at d_max plus optimizer state: the largest file of the run) is no longer needed.
            remove_tree(join(ckpt_dir, "supernet"))
    result: tuple[list[int], dict[str, Any], dict[str, Any]] | None = None
    if env.is_main:
        assert evaluator is not None
        t0 = time.perf_counter()
        costs = candidate_bytes(ctx)
        search = PolicySearch(
            evaluator.auc,
            costs,
            ctx.budget.bytes,
            acfg,
            cfg.train.seed,
            writer,
            join(ckpt_dir, "rl_state.pt") if ckpt_dir else "",
            cfg.train.progress,
        )
        argmax = search.run()
        if acfg.confirm_moves:  # select on the even rows, confirm on the odd ones (fit_to_budget's doc)
            final, moves = fit_to_budget(
                argmax,
                costs,
                ctx.budget.bytes,
                lambda c: evaluator.half_auc(c, 0),
                acfg.min_gain,
                confirm=lambda c: evaluator.half_auc(c, 1),
                tolerance=acfg.shrink_tolerance,
            )
        else:
            final, moves = fit_to_budget(argmax, costs, ctx.budget.bytes, evaluator.auc, acfg.min_gain)
        names = evaluator.table_names
        rl_log = {
            "seconds": time.perf_counter() - t0,
            "updates": search.update,
            "final_entropy": search.history[-1]["entropy"] if search.history else None,
            "argmax_dims": {n: ctx.candidates[k] for n, k in zip(names, argmax, strict=True)},
            "argmax_val_auc": evaluator.auc(argmax),
            "argmax_bytes": sum(costs[f][k] for f, k in enumerate(argmax)),
            "final_val_auc": evaluator.auc(final),
            "budget_moves": [_name_move(m, names, ctx.candidates) for m in moves],
            "evaluations": evaluator.evaluations,
        }
        landscape = _landscape(evaluator, costs, argmax, final, ctx.candidates)
        result = ([ctx.candidates[k] for k in final], rl_log, landscape)
        if writer:
            writer.add_scalar("rl/final_val_auc", rl_log["final_val_auc"], search.update)
            writer.flush()
    dims, log["rl"], log["landscape"] = broadcast_object(result)
    arch = Architecture.from_dims(ctx.schema, dims, method="adass")
    if not ctx.budget.fits(arch):  # fit_to_budget's sums are the same estimates: an internal error
        raise AssertionError(f"adass: {ctx.budget.used(arch)} > budget {ctx.budget.bytes}")
    log["seconds"] = time.perf_counter() - start
    if writer:
        writer.close()
    return SearchResult(arch, log)


def _landscape(
    evaluator: SupernetEvaluator,
    costs: list[list[int]],
    argmax: list[int],
    final: list[int],
    candidates: Sequence[int],
    max_points: int = 4000,
) -> dict[str, Any]:
    """Quality vs bytes of every architecture the search scored, plus the uniform baselines at each
    candidate, the policy's argmax and the final choice (the report's `quality_vs_bytes.png`)."""

    def point(choice: Sequence[int]) -> list[float]:
        return [sum(costs[f][k] for f, k in enumerate(choice)), round(evaluator.auc(choice), 5)]

    num_tables = len(costs)
    named = {f"uniform-{d}": point([k] * num_tables) for k, d in enumerate(candidates)}
    named.update({"policy argmax": point(argmax), "final": point(final)})
    scored = [
        [sum(costs[f][k] for f, k in enumerate(key)), round(v[0], 5)]
        for key, v in evaluator.scored()[:max_points]
    ]
    return {
        "x": "embedding bytes (TorchRec estimate)",
        "y": "val AUC with supernet weights (fixed val slice)",
        "points": scored,
        "named": named,
    }


def _name_move(move: str, names: list[str], candidates: list[int]) -> str:
    kind, f, _, k = move.split()
    return f"{kind} {names[int(f)]} -> {candidates[int(k)]}"
