"""BET: budgeted embedding tables with a row-wise size per user and item (Qu et al., WSDM 2024).

Methods (CF data, `data.type=interactions`, `model.type=mf|lightgcn`):

- `bet`: the search. Pre-train the full-size model (every row at d_max) once. Then T iterations: sample m
  feasible actions (a size for every user and item, within the budget by construction), pick one
  (cycling `bet.schedule`: argmax of the predicted fitness, a random one, or the one nearest in the
  predictor's embedding space to the best action so far), reload the pre-trained weights, fine-tune under
  the action's prefix mask for E epochs with a fresh optimizer, and score it: fitness = validation
  quality / the full model's validation quality, quality = mean of Recall@K and NDCG@K over
  `train.ranking_k`. The (action, fitness) pair joins the replay set and the DeepSets predictor takes
  `bet.predictor_updates` single-sample steps. Finally the top-k actions are retrained from scratch,
  the best on validation is kept and its test metrics reported (test is read once, for that one).
- `bet_su`: the uniform baseline at the same budget (largest size, a multiple of 4, for every row).
- `bet_sr`: one random action of the sampler, retrained from scratch (no predictor, no fine-tuning).

Budget: `search.budget` in bytes (TorchRec's estimate of the bucket tables, optimizer state included) or
parameters (`search.count=params`, the paper's (1-c)·d_max·(|U|+|V|) is `"0.2 x uniform-128"` for c = 80%).
TorchRec's estimate is linear per row (`RowCost`), so the sampler can guarantee it: every row first gets
one size quantum (`bet.multiple`) reserved -- this fixes the paper's leak, where clamping sizes to >= 1
after flooring could exceed the budget -- and only the rest is distributed. The returned architecture
(one table per size bucket) is checked against TorchRec's estimate again before it is returned.

Ours (not fixed by the paper): sizes are multiples of 4; flooring leftovers go to the largest remainders
(the paper just floors, wasting up to one unit per row); after `bet.max_redraws` redraws a side's sizes
are clipped to d_max with the freed budget refilled; the predictor groups users and items into one set;
the final retraining trains the d_max tables under the mask (equivalent to the bucket tables for SGD and
Adagrad; row-wise Adagrad averages its per-row state over d_max columns instead of the row's size).

Artifacts: `architecture.yaml` holds the bucket tables (`t_user_d8`, ...) with `extra.row_dims` /
`extra.row_remap` naming `row_dims.npy` / `row_remap.npy` in the run directory; `RUN/bet/` holds the
pre-trained tables and the loop state (replay set + predictor, saved every iteration; a rerun resumes);
TensorBoard scalars go to `RUN/tb/bet`.

Example::

    result = bet_search(cfg, data, budget, run_dir)      # SearchResult
    result.arch.tables                                   # bucket tables within the budget
    result.log["final"]["test"]["recall@20"]
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.interactions import InteractionData
from torchrec_aes.embedding.rowwise import BucketLayout, RowCost, bucket_architecture
from torchrec_aes.io import exists, join, load_torch, makedirs, save_torch_atomic
from torchrec_aes.models.cf import ITEM, USER
from torchrec_aes.planning.memory import Budget, arch_bytes
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.train.distributed import broadcast_object, init_distributed

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("power", "truncated_exponential", "truncated_normal", "lognormal")
PICK_RULES = ("argmax", "random", "nearest")


# ---------------------------------------------------------------------------------------------------------
# Budget-guaranteed action sampler
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Action:
    """Row sizes of one candidate: user_dims [U] and item_dims [I], multiples of the quantum.

    Args:
        user_dims: [U] int64 sizes.
        item_dims: [I] int64 sizes.
        info: how it was drawn (user share, distributions and their parameters), for logs.
    """

    user_dims: torch.Tensor
    item_dims: torch.Tensor
    info: dict[str, Any]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {USER: self.user_dims, ITEM: self.item_dims}


def _draw_values(n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """n positive values from one of the four distributions with a random shape (the paper's ranges)."""
    kind = DISTRIBUTIONS[int(torch.randint(len(DISTRIBUTIONS), (1,), generator=generator))]
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    shape = float(torch.rand(1, generator=generator, dtype=torch.float64))
    if kind == "power":  # density a x^(a-1) on [0, 1], a ~ U(0, 20)
        a = max(20.0 * shape, 1e-3)
        values = u ** (1.0 / a)
    elif kind == "truncated_exponential":  # Exp(1) truncated to [0, b], b ~ U(0, 5)
        a = max(5.0 * shape, 1e-6)
        values = -torch.log1p(-u * (1.0 - math.exp(-a)))
    elif kind == "truncated_normal":  # N(0, 1) truncated to [0, beta], beta ~ U(0, 20)
        a = max(20.0 * shape, 1e-6)
        top = float(torch.special.ndtr(torch.tensor(a, dtype=torch.float64)))
        values = torch.special.ndtri(0.5 + u * (top - 0.5))
    else:  # log-normal, sigma ~ U(0, 0.5)
        a = 0.5 * shape
        values = torch.exp(a * torch.randn(n, generator=generator, dtype=torch.float64))
    values = torch.nan_to_num(values.clamp(min=0.0), nan=0.0, posinf=0.0)
    if float(values.sum()) <= 0:
        values = torch.ones(n, dtype=torch.float64)
    return values, {"distribution": kind, "shape": a}


def _fill(free: int, values: torch.Tensor, cap: int) -> torch.Tensor:
    """Splits `free` quanta over rows in proportion to `values`, each row at most `cap`: floor, then the
    leftover to the largest remainders, then (if clipped at `cap`) to the largest values with room."""
    share = values / values.sum() * free
    extra = torch.floor(share).long().clamp(max=cap)
    left = free - int(extra.sum())
    remainder = torch.where(extra < cap, share - extra, torch.full_like(share, -1.0))
    while left > 0:
        room = int((extra < cap).sum())
        if room == 0:
            break
        take = min(left, room)
        idx = torch.topk(remainder, take).indices
        extra[idx] += 1
        left -= take
        remainder[idx] = torch.where(extra[idx] < cap, values[idx] / values.max(), -1.0)
    return extra


class ActionSampler:
    """Samples row-wise sizes that never exceed the budget; more frequent rows never get smaller sizes.

    The budget is `budget` in the unit of `cost` (bytes or parameters). Every row is reserved one quantum
    (`multiple`) up front, so the clamp to the minimum size cannot overrun the budget; the remaining
    quanta are split between users (share w ~ U(0, 1)) and items, then over the rows of each side by one
    of four distributions (normalise, scale to the side's quanta, floor, leftover to the largest
    remainders). A side whose largest size exceeds d_max is redrawn; sizes are sorted and the largest go
    to the most frequent rows (ties by id).

    Args:
        user_freq: [U] training interactions per user.
        item_freq: [I] training interactions per item.
        budget: what all rows may cost.
        cost: per-row cost (`RowCost.of(optimizer, count)`).
        max_dim: d_max.
        multiple: size quantum (4 for FBGEMM).
        max_redraws: redraws per side before clipping to d_max.

    Raises:
        ValueError: the budget cannot give every row the smallest size (says the minimum).
    """

    def __init__(
        self,
        user_freq: torch.Tensor,
        item_freq: torch.Tensor,
        budget: int,
        cost: RowCost,
        max_dim: int = 128,
        multiple: int = 4,
        max_redraws: int = 20,
    ) -> None:
        if max_dim % multiple or max_dim < multiple:
            raise ValueError(f"search.bet.max_dim: {max_dim} must be a positive multiple of {multiple}")
        self.multiple, self.max_dim, self.max_redraws = multiple, max_dim, max_redraws
        self.num_users, self.num_items = user_freq.numel(), item_freq.numel()
        self.quanta_max = max_dim // multiple
        rows = self.num_users + self.num_items
        reserve = cost.total(torch.full((rows,), multiple))
        if reserve > budget:
            raise ValueError(
                f"budget {budget} is below {reserve}, the cost of every user and item at size {multiple}"
            )
        per_quantum = cost.per_dim * multiple
        self.free = min((budget - reserve) // per_quantum, rows * (self.quanta_max - 1))
        # Stable sort by descending frequency: position j holds the j-th most frequent row.
        self.user_order = torch.sort(-user_freq.long(), stable=True).indices
        self.item_order = torch.sort(-item_freq.long(), stable=True).indices

    def _side(
        self, n: int, free: int, order: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        cap = self.quanta_max - 1
        redraws = 0
        values, info = _draw_values(n, gen)
        while float((values / values.sum() * free).max()) > cap + 1e-9 and redraws < self.max_redraws:
            values, info = _draw_values(n, gen)
            redraws += 1
        info["redraws"] = redraws
        extra = _fill(free, values, cap)  # clips at cap (only when redraws ran out) and refills
        quanta = 1 + torch.sort(extra, descending=True).values
        dims = torch.empty(n, dtype=torch.int64)
        dims[order] = quanta * self.multiple
        return dims, info

    def sample(self, generator: torch.Generator) -> Action:
        """One feasible action."""
        w = float(torch.rand(1, generator=generator, dtype=torch.float64))
        cap_u = self.num_users * (self.quanta_max - 1)
        cap_i = self.num_items * (self.quanta_max - 1)
        free_u = min(int(w * self.free), cap_u)
        free_i = min(self.free - free_u, cap_i)
        free_u = min(self.free - free_i, cap_u)  # what items cannot take goes back to users
        user_dims, user_info = self._side(self.num_users, free_u, self.user_order, generator)
        item_dims, item_info = self._side(self.num_items, free_i, self.item_order, generator)
        return Action(user_dims, item_dims, {"user_share": w, "user": user_info, "item": item_info})

    def uniform(self) -> Action:
        """The same-budget uniform action: the largest multiple of the quantum that every row can have."""
        rows = self.num_users + self.num_items
        quanta = min(1 + self.free // rows, self.quanta_max)
        dim = quanta * self.multiple
        return Action(
            torch.full((self.num_users,), dim, dtype=torch.int64),
            torch.full((self.num_items,), dim, dtype=torch.int64),
            {"uniform_dim": dim},
        )


# ---------------------------------------------------------------------------------------------------------
# DeepSets fitness predictor
# ---------------------------------------------------------------------------------------------------------


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class FitnessPredictor(nn.Module):
    """DeepSets regressor of an action's fitness (BET's predictor).

    Entity encoder 1 -> 16 -> 16 on each row's normalised frequency; for each size d present in the
    action, the mean encoding of the rows of size d, concatenated with d / d_max, goes through
    17 -> 64 -> 64; the action embedding is the mean over sizes; the decoder 64 -> 64 -> 1 gives the
    fitness. LeakyReLU throughout.

    Args:
        freq: [N] normalised frequency of every row (users then items, each divided by its side's max).
        max_dim: d_max.
        multiple: size quantum (sizes are grouped per quantum count).
    """

    def __init__(self, freq: torch.Tensor, max_dim: int, multiple: int) -> None:
        super().__init__()
        self.register_buffer("freq", freq.float().reshape(-1, 1), persistent=False)
        self.max_dim, self.multiple = max_dim, multiple
        self.num_sizes = max_dim // multiple
        self.encoder = _mlp([1, 16, 16], last_activation=True)
        self.size_net = _mlp([17, 64, 64], last_activation=True)
        self.decoder = _mlp([64, 64, 1], last_activation=False)

    def embed(self, dims: torch.Tensor) -> torch.Tensor:
        """Action embeddings: dims [A, N] (row sizes, users then items) -> [A, 64]."""
        enc = self.encoder(self.freq)  # [N, 16]
        sizes = (torch.arange(1, self.num_sizes + 1, dtype=torch.float32) * self.multiple / self.max_dim)[
            :, None
        ]
        out = []
        for row in dims:
            idx = torch.div(row, self.multiple, rounding_mode="floor") - 1  # [N] in [0, S)
            sums = torch.zeros(self.num_sizes, enc.shape[1]).index_add_(0, idx, enc)
            counts = torch.bincount(idx, minlength=self.num_sizes)
            present = counts > 0
            means = sums[present] / counts[present, None]
            h = self.size_net(torch.cat([means, sizes[present]], dim=1))  # [S', 64]
            out.append(h.mean(0))
        return torch.stack(out)

    def forward(self, dims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dims [A, N] -> (predicted fitness [A], embeddings [A, 64])."""
        emb = self.embed(dims)
        return self.decoder(emb).squeeze(1), emb


class PredictorTrainer:
    """Adam on MSE, one sample per step, lr decaying by `decay` per step down to `min_lr` (BET's schedule)."""

    def __init__(self, model: FitnessPredictor, lr: float, decay: float, min_lr: float) -> None:
        self.model, self.decay, self.min_lr = model, decay, min_lr
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def update(self, dims: torch.Tensor, fitness: float) -> float:
        """One step on one action dims [N] with target `fitness`; returns the loss before the step."""
        pred, _ = self.model(dims[None])
        loss = (pred[0] - fitness) ** 2
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for group in self.opt.param_groups:
            group["lr"] = max(group["lr"] * self.decay, self.min_lr)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def normalised_frequency(data: InteractionData) -> torch.Tensor:
    """[U + I] training frequency of users then items, each side divided by its maximum."""
    user = data.user_freq.double() / max(int(data.user_freq.max()), 1)
    item = data.item_freq.double() / max(int(data.item_freq.max()), 1)
    return torch.cat([user, item]).float()


# ---------------------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------------------


def quality(metrics: dict[str, float], ks: list[int]) -> float:
    """Mean of Recall@K and NDCG@K over `ks` (BET's fitness numerator)."""
    return sum(metrics[f"recall@{k}"] + metrics[f"ndcg@{k}"] for k in ks) / (2 * len(ks))


def _with_epochs(cfg: Config, epochs: int) -> Config:
    out = copy.deepcopy(cfg)
    out.train.epochs = epochs
    return out


def _finish(
    cfg: Config,
    data: InteractionData,
    budget: Budget,
    run_dir: str,
    method: str,
    candidates: list[Action],
    log: dict[str, Any],
) -> SearchResult:
    """Retrains `candidates` from scratch, keeps the best on validation, writes its row sizes, returns
    its bucket architecture (checked against TorchRec's estimate) with test metrics in the log."""
    from torchrec_aes.train.cf_trainer import train_cf

    ks = list(cfg.train.ranking_k)
    full_arch = Architecture.uniform(data.schema, cfg.search.bet.max_dim)
    results = []
    for j, action in enumerate(candidates):
        uniform_dim = action.info.get("uniform_dim")
        if uniform_dim:  # SU: a physical uniform table is the same model, without the mask
            res = train_cf(
                cfg, Architecture.uniform(data.schema, uniform_dim), data, run_dir, tag=f"{method}/final_{j}"
            )
        else:
            res = train_cf(
                cfg, full_arch, data, run_dir, tag=f"{method}/final_{j}", row_dims=action.as_dict()
            )
        results.append(res)
        logger.info("%s final candidate %d: val quality %.4f", method, j, quality(res["val"], ks))
    best = max(range(len(candidates)), key=lambda j: quality(results[j]["val"], ks))
    action = candidates[best]
    layout = BucketLayout.from_row_dims(action.as_dict())
    arch = bucket_architecture(layout, method)
    if run_dir:
        if init_distributed().is_main:
            layout.save(run_dir)
        arch.extra.update(layout.extra())
    arch.extra["max_dim"] = cfg.search.bet.max_dim
    used = budget.used(arch)
    if used > budget.bytes:  # the sampler's guarantee, checked with TorchRec's own estimate
        raise RuntimeError(f"BET: bucket architecture costs {used} > budget {budget.bytes}")
    res = results[best]
    log.update(
        {
            "final": {"val": res["val"], "test": res["test"], "best_epoch": res["best_epoch"]},
            "final_candidates": [
                {"val_quality": quality(r["val"], ks), "info": c.info}
                for r, c in zip(results, candidates, strict=True)
            ],
            "chosen": best,
            "budget_used": used,
            "embedding_bytes": arch_bytes(arch, cfg.train.embedding_optimizer),
            "row_dims": {
                f: {"mean": float(d.float().mean()), "min": int(d.min()), "max": int(d.max())}
                for f, d in action.as_dict().items()
            },
            "buckets": [[f, d, n] for f, d, n in layout.buckets],
        }
    )
    return SearchResult(arch, log)


def _sampler(cfg: Config, data: InteractionData, budget: Budget) -> ActionSampler:
    bc = cfg.search.bet
    cost = RowCost.of(budget.optimizer, budget.count)
    return ActionSampler(
        data.user_freq, data.item_freq, budget.bytes, cost, bc.max_dim, bc.multiple, bc.max_redraws
    )


def bet_search(
    cfg: Config, data: InteractionData, budget: Budget, run_dir: str = "", variant: str = "bet"
) -> SearchResult:
    """Runs BET (`variant="bet"`) or a baseline ("bet_su", "bet_sr") on CF data under `budget`.

    Args:
        cfg: run config (`search.bet`, `model.type` mf|lightgcn, `train.*`).
        data: interactions with per-user train/val/test.
        budget: bytes of the bucket tables by TorchRec's estimate, or parameters.
        run_dir: where `row_dims.npy`, `row_remap.npy`, `bet/` state and `tb/bet` go ("" = nowhere; no
            resume).
        variant: "bet" | "bet_su" | "bet_sr".

    Returns:
        The bucket architecture and a log with the final candidate's val/test metrics under "final".
    """
    from torchrec_aes.train.cf_trainer import train_cf

    bc = cfg.search.bet
    unknown = [r for r in bc.schedule if r not in PICK_RULES]
    if unknown or not bc.schedule:
        raise ValueError(
            f"search.bet.schedule: {bc.schedule} must be a non-empty list of {', '.join(PICK_RULES)}"
        )
    sampler = _sampler(cfg, data, budget)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    log: dict[str, Any] = {"variant": variant, "free_quanta": sampler.free}
    if variant == "bet_su":
        return _finish(cfg, data, budget, run_dir, variant, [sampler.uniform()], log)
    if variant == "bet_sr":
        return _finish(cfg, data, budget, run_dir, variant, [sampler.sample(gen)], log)
    if variant != "bet":
        raise ValueError(f"BET variant '{variant}' is not one of bet, bet_su, bet_sr")

    ks = list(cfg.train.ranking_k)
    main = init_distributed().is_main
    state_dir = join(run_dir, "bet") if run_dir else ""
    if state_dir and main:
        makedirs(state_dir)
    full_arch = Architecture.uniform(data.schema, bc.max_dim)

    # Pre-train the full-size model once (kept across resumes).
    pre_path = join(state_dir, "pretrained.pt") if state_dir else ""
    if pre_path and bc.resume and exists(pre_path):
        pre = load_torch(pre_path, weights_only=False)
    else:
        res = train_cf(cfg, full_arch, data, run_dir, tag="bet/pretrain", keep_tables=True)
        pre = {"tables": res["tables"], "val": res["val"]}
        if pre_path and main:
            save_torch_atomic(pre_path, pre)
    full_quality = quality(pre["val"], ks)
    log["full_model"] = {"val": pre["val"], "quality": full_quality}

    predictor = FitnessPredictor(normalised_frequency(data), bc.max_dim, bc.multiple)
    trainer = PredictorTrainer(predictor, bc.predictor_lr, bc.predictor_lr_decay, bc.predictor_min_lr)
    replay: list[dict[str, Any]] = []
    start_iter = 0
    state_path = join(state_dir, "state.pt") if state_dir else ""
    if state_path and bc.resume and exists(state_path):
        state = load_torch(state_path, weights_only=False)
        replay, start_iter = state["replay"], state["iteration"]
        trainer.load_state_dict(state["predictor"])
        gen.set_state(state["generator"])
        logger.info("BET: resuming at iteration %d with %d evaluated actions", start_iter, len(replay))

    writer = SummaryWriter(join(run_dir, "tb", "bet")) if run_dir and main else None
    finetune_cfg = _with_epochs(cfg, bc.finetune_epochs)
    finetune_cfg.train.progress = False
    bar = tqdm(total=bc.iterations, initial=start_iter, desc="BET", disable=not (main and cfg.train.progress))
    for it in range(start_iter, bc.iterations):
        t0 = time.perf_counter()
        actions = [sampler.sample(gen) for _ in range(bc.actions)]
        dims = torch.stack([torch.cat([a.user_dims, a.item_dims]) for a in actions])  # [m, N]
        rule = bc.schedule[it % len(bc.schedule)]
        if not replay and rule != "random":
            rule = "random"  # nothing to predict from or be near to yet
        with torch.no_grad():
            pred, emb = predictor(dims)
        if rule == "argmax":
            pick = int(torch.argmax(pred))
        elif rule == "random":
            pick = int(torch.randint(len(actions), (1,), generator=gen))
        else:
            best_dims = max(replay, key=lambda r: r["fitness"])["dims"].long()
            with torch.no_grad():
                best_emb = predictor.embed(best_dims[None])
            pick = int(torch.argmin(torch.cdist(emb, best_emb).squeeze(1)))
        # Rank 0's choice for everyone: ranks must fine-tune the same action (sharded lookups are collective).
        pick = broadcast_object(pick)
        action = actions[pick]
        res = train_cf(
            finetune_cfg,
            full_arch,
            data,
            "",
            tag=f"bet/finetune_{it}",
            init_tables=pre["tables"],
            row_dims=action.as_dict(),
        )
        fitness = quality(res["val"], ks) / max(full_quality, 1e-12)
        replay.append(
            {
                "dims": dims[pick].to(torch.int16),
                "fitness": fitness,
                "predicted": float(pred[pick]),
                "rule": rule,
                "iteration": it,
                "info": action.info,
                "val": res["val"],
            }
        )
        # Single-sample updates: the newest action first, then random ones from the replay set.
        losses = []
        for u in range(bc.predictor_updates):
            r = replay[-1] if u == 0 else replay[int(torch.randint(len(replay), (1,), generator=gen))]
            losses.append(trainer.update(r["dims"].long(), r["fitness"]))
        if state_path and main:
            save_torch_atomic(
                state_path,
                {
                    "replay": replay,
                    "iteration": it + 1,
                    "predictor": trainer.state_dict(),
                    "generator": gen.get_state(),
                },
            )
        best_fitness = max(r["fitness"] for r in replay)
        if writer:
            writer.add_scalar("bet/fitness", fitness, it)
            writer.add_scalar("bet/predicted", float(pred[pick]), it)
            writer.add_scalar("bet/best_fitness", best_fitness, it)
            writer.add_scalar("bet/predictor_loss", sum(losses) / len(losses), it)
            writer.add_scalar("bet/predictor_lr", trainer.lr, it)
            writer.add_scalar("bet/user_share", action.info["user_share"], it)
            writer.add_scalar("bet/iteration_seconds", time.perf_counter() - t0, it)
        bar.update(1)
        bar.set_postfix(fitness=f"{fitness:.3f}", best=f"{best_fitness:.3f}", rule=rule)
    bar.close()
    if writer:
        writer.close()

    ranked = sorted(replay, key=lambda r: -r["fitness"])[: bc.top_k]
    num_users = data.num_users
    candidates = [
        Action(
            r["dims"][:num_users].long(), r["dims"][num_users:].long(), {**r["info"], "fitness": r["fitness"]}
        )
        for r in ranked
    ]
    log["iterations"] = [{k: r[k] for k in ("iteration", "rule", "fitness", "predicted")} for r in replay]
    return _finish(cfg, data, budget, run_dir, variant, candidates, log)


def _interactions(ctx: SearchContext) -> InteractionData:
    data = ctx.interactions
    if data is None:
        raise ValueError(
            f"search.method={ctx.cfg.search.method} searches row-wise sizes of CF user/item tables: it needs "
            "data.type=interactions and model.type=mf|lightgcn"
        )
    return data


@register("bet")
def bet(ctx: SearchContext) -> SearchResult:
    return bet_search(ctx.cfg, _interactions(ctx), ctx.budget, ctx.run_dir, "bet")


@register("bet_su")
def bet_su(ctx: SearchContext) -> SearchResult:
    return bet_search(ctx.cfg, _interactions(ctx), ctx.budget, ctx.run_dir, "bet_su")


@register("bet_sr")
def bet_sr(ctx: SearchContext) -> SearchResult:
    return bet_search(ctx.cfg, _interactions(ctx), ctx.budget, ctx.run_dir, "bet_sr")
