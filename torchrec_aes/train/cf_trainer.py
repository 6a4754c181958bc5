"""BPR training of the CF models (MF, LightGCN) on TorchRec's distributed stack.

Same stack as the CTR trainer: the EBC is built on the meta device, the table optimizer is fused into
the backward pass (`apply_optimizer_in_backward`; row-wise Adagrad by default, so TorchRec's planner
counts its state), TorchRec's planner shards the tables over all ranks and `DistributedModelParallel`
materialises them. The CF models have no dense parameters, so there is no dense optimizer and no DDP
wrapper. Tables the planner makes data-parallel are plain parameters whose gradients TorchRec's DDP
inside the lookup averages over ranks; the same table optimizer (class and lr) is stepped on them after
backward. (Sharded tables sum the ranks' gradients instead; Adagrad-type optimizers are nearly
invariant to that scale.)

Data parallelism: every epoch all ranks draw the same seeded permutation of the training (user, item)
pairs and each takes an equal contiguous share; negatives are sampled uniformly per rank (seeded by
seed, epoch and rank) and resampled while they hit one of the user's training items (LightGCN's
sampler). All ranks run the same number of steps, since sharded lookups are collectives.

Loss: BPR, -log sigmoid(s(u, i+) - s(u, i-)) averaged over the batch, plus `train.weight_decay` times
LightGCN's L2 term on the batch's layer-0 rows (0.5 * squared norm / B). The CF models have no dense
weights, so `train.weight_decay` is reused as this coefficient (LightGCN's paper uses 1e-4).

Evaluation every epoch on validation (full ranking, training items masked), early stopping on val
Recall@20 (or Recall@max K when 20 is not among `train.ranking_k`) after `train.patience` epochs without
improvement; the final user/item matrices of the best epoch are kept in memory and tested once at the
end, with training and validation items masked. Every rank computes the full matrices (a collective read
of all rows) and ranks an interleaved share of the users; sums are all-reduced, so every rank returns the
same metrics.

Checkpoints (`checkpoint=True`, what `torchrec-aes train` passes from `train.checkpoint`): a DCP
checkpoint of the tables and the table optimizer's state after every epoch under
`run_dir/checkpoints/<tag>/` (the CTR trainer's `Checkpointer`: the latest and the best epoch are kept);
a rerun with the same run directory resumes after the last complete epoch and gives the same result as an
uninterrupted run (the pair order and negatives are seeded per epoch).

With the same seed, 1 process and 2 processes give different (equally valid) runs: table
initialisation depends on the sharding and the pair shares differ.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.utils.tensorboard import SummaryWriter
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.interactions import CSR, InteractionData
from torchrec_aes.io import join
from torchrec_aes.models.cf import CF_MODELS, ITEM, USER, CFModel, build_cf_model
from torchrec_aes.planning.memory import OPTIMIZERS, attach_table_optimizer
from torchrec_aes.planning.plan import default_sharders, make_topology, plan_model
from torchrec_aes.train.checkpoint import Checkpointer
from torchrec_aes.train.distributed import DistEnv, init_distributed
from torchrec_aes.train.ranking import evaluate_ranking

logger = logging.getLogger(__name__)


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


def _plan(
    model: CFModel, arch: Architecture, cfg: Config, env: DistEnv, sharding_types: list[str] | None
) -> ShardingPlan:
    topology = make_topology(env.world_size, env.device.type, cfg.plan.hbm_gb, cfg.plan.ddr_gb)
    if not sharding_types:
        return plan_model(model, arch, topology, cfg.train.batch_size, pg=env.pg)
    constraints = {
        t.name: ParameterConstraints(sharding_types=list(sharding_types)) for t in arch.active_tables
    }
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=cfg.train.batch_size, constraints=constraints, debug=False
    )
    return planner.collective_plan(model, default_sharders(), env.pg)


@torch.no_grad()
def load_tables(model: CFModel, tables: dict[str, torch.Tensor]) -> None:
    """Copies full table weights {"user": [U, d_user], "item": [I, d_item]} into a (sharded) model.

    Each rank writes the slices of its local shards (table-wise, column-wise) or the whole table
    (data-parallel, unsharded), so every rank must pass the same full tensors.
    """
    by_table = {}
    shapes = {USER: (model.num_users, model.user_dim), ITEM: (model.num_items, model.item_dim)}
    for feature, full in tables.items():
        if feature not in shapes:
            raise ValueError(f"initial tables: unknown feature '{feature}'; allowed: {USER}, {ITEM}")
        if tuple(full.shape) != shapes[feature]:
            raise ValueError(
                f"initial '{feature}' table: expected shape {shapes[feature]}, got {tuple(full.shape)}"
            )
        by_table[model.table_names[feature]] = full
    for key, value in model.ebc.state_dict().items():
        name = key.split(".")[-2]  # embedding_bags.<table>.weight
        if name not in by_table:
            continue
        full = by_table[name]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc])
        else:
            value.copy_(full)


def _stop_key(ks: list[int]) -> str:
    return "recall@20" if 20 in ks else f"recall@{max(ks)}"


def train_cf(
    cfg: Config,
    arch: Architecture,
    data: InteractionData,
    run_dir: str = "",
    *,
    tag: str = "train",
    init_tables: dict[str, torch.Tensor] | None = None,
    row_dims: dict[str, torch.Tensor] | None = None,
    keep_tables: bool = False,
    sharding_types: list[str] | None = None,
    checkpoint: bool = False,
) -> dict[str, Any]:
    """Trains `cfg.model.type` ("mf" | "lightgcn") with BPR on `data` and evaluates Recall/NDCG@K.

    Args:
        cfg: run config (`model.type`, `model.num_layers`, `train.*`, `plan.hbm_gb/ddr_gb`).
        arch: tables `t_user` / `t_item` of `data.schema` (e.g. `Architecture.uniform(data.schema, 64)`).
        data: the interactions and their per-user splits.
        run_dir: TensorBoard events go to `run_dir/tb/<tag>` ("" = no logs).
        tag: names this training inside a run (e.g. "pretrain", "finetune_3").
        init_tables: start from these weights ({"user": [U, d_user], "item": [I, d_item]}, e.g. a
            pre-trained model's `tables`) instead of a fresh initialisation; the optimizer starts fresh.
        row_dims: per-row sizes {"user": [U], "item": [I]} applied as prefix masks (BET).
        keep_tables: also return the best epoch's raw weights under "tables" (CPU tensors).
        sharding_types: restrict the planner to these sharding types (e.g. ["table_wise"]).
        checkpoint: checkpoint every epoch under `run_dir/checkpoints/<tag>` and resume from there (needs
            `run_dir`).

    Returns:
        {"val": {"recall@K", "ndcg@K" for every K, "users"} of the best epoch, "test": the same on test,
         "num_users", "num_items", "wall_seconds", "epochs" (run), "best_epoch", "history" (per epoch:
         train loss and val metrics), "sharding" ({table: sharding type})}, identical on every rank.
    """
    start_time = time.perf_counter()
    tc = cfg.train
    if cfg.model.type not in CF_MODELS:
        raise ValueError(f"model.type: '{cfg.model.type}' is not a CF model; allowed: {', '.join(CF_MODELS)}")
    env = init_distributed()
    torch.manual_seed(tc.seed)
    model = build_cf_model(cfg.model.type, arch, data, cfg.model.num_layers, torch.device("meta"))
    attach_table_optimizer(model.ebc, tc.embedding_optimizer, tc.embedding_lr)
    plan = _plan(model, arch, cfg, env, sharding_types)
    dmp = DistributedModelParallel(model, device=env.device, plan=plan, sharders=default_sharders())
    cf: CFModel = dmp.module
    cf.compute_device = env.device
    # Data-parallel tables use TorchRec's dense kernel: their weights are ordinary parameters (gradients
    # all-reduced by the DDP inside the lookup) that the fused in-backward optimizer does not cover, so
    # the same table optimizer is stepped on them explicitly.
    replicated = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    replicated_opt = None
    if replicated:
        replicated_opt = KeyedOptimizerWrapper(
            replicated, lambda params: OPTIMIZERS[tc.embedding_optimizer](params, lr=tc.embedding_lr)
        )
    optimizers = [("fused", dmp.fused_optimizer)]
    if replicated_opt is not None:
        optimizers.append(("replicated", replicated_opt))
    optimizer = CombinedOptimizer(optimizers)  # for checkpoints; the fused part steps inside backward
    if init_tables is not None:
        load_tables(cf, init_tables)
    if row_dims is not None:
        cf.set_row_dims(row_dims.get("user"), row_dims.get("item"))
    group = env.pg if env.world_size > 1 else None
    ks = list(tc.ranking_k)
    stop_key = _stop_key(ks)
    writer = SummaryWriter(join(run_dir, "tb", tag)) if run_dir and env.is_main else None
    checkpointer = (
        Checkpointer(join(run_dir, "checkpoints", tag), env.is_main) if checkpoint and run_dir else None
    )

    pair_users, pair_items = data.train.to_pairs()
    per_rank = pair_users.numel() // env.world_size
    steps = -(-per_rank // tc.batch_size)
    if tc.max_steps:
        steps = min(steps, tc.max_steps)
    tables = {t.name: [t.num_embeddings, t.embedding_dim] for t in arch.active_tables}
    state: dict[str, Any] = {
        "epoch": -1,
        "best_epoch": -1,
        "best_score": -1.0,
        "best_val": {},
        "history": [],
        "global_step": 0,
        "tables": tables,
    }
    if checkpointer and (saved := checkpointer.state()) is not None:
        if saved.get("tables") != tables:
            raise ValueError(
                f"{checkpointer.directory} holds a checkpoint of another architecture; "
                "use a new run directory (or delete that checkpoint) to train this one"
            )
        state = saved
        checkpointer.load(state["epoch"], dmp, optimizer)
        if env.is_main:
            logger.info("resumed %s from epoch %d", tag, state["epoch"])
    # The best epoch's score matrices (and raw tables), when it ran in this process.
    best_matrices: tuple[torch.Tensor, torch.Tensor] | None = None
    best_tables: dict[str, torch.Tensor] | None = None
    for epoch in range(state["epoch"] + 1, tc.epochs):
        if state["best_epoch"] >= 0 and state["epoch"] - state["best_epoch"] >= tc.patience:
            break
        # Same permutation on all ranks (seeded by epoch), then an equal contiguous share per rank.
        order = torch.randperm(
            pair_users.numel(), generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch)
        )
        mine = order[env.rank * per_rank : (env.rank + 1) * per_rank]
        users, positives = pair_users[mine], pair_items[mine]
        gen = torch.Generator().manual_seed((tc.seed * 1000 + epoch) * 1000 + env.rank)
        negatives = sample_negatives(users, data.train, data.num_items, gen)
        dmp.train()
        loss_sum, loss_count = 0.0, 0
        bar = tqdm(
            total=steps,
            desc=f"{tag} epoch {epoch}",
            disable=not (tc.progress and env.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for step in range(steps):
            batch = slice(step * tc.batch_size, (step + 1) * tc.batch_size)
            u = users[batch].to(env.device)
            items = torch.stack([positives[batch], negatives[batch]], dim=1).to(env.device)
            scores, ego_l2 = dmp(u, items)
            loss = bpr_loss(scores) + tc.weight_decay * ego_l2
            # Sharded tables are updated inside backward by the fused optimizer.
            loss.backward()
            if replicated_opt is not None:
                replicated_opt.step()
                replicated_opt.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            loss_count += 1
            state["global_step"] += 1
            bar.update(1)
            if writer and state["global_step"] % tc.log_every == 0:
                writer.add_scalar("train/bpr_loss", loss.item(), state["global_step"])
        bar.close()
        val, matrices = _evaluate(dmp, cf, data.val, [data.train], ks, group)
        train_loss = loss_sum / max(loss_count, 1)
        state["history"].append(
            {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
        )
        if writer:
            writer.add_scalar("train/epoch_loss", train_loss, epoch)
            for k, v in val.items():
                writer.add_scalar(f"val/{k}", v, epoch)
        if env.is_main:
            logger.info("%s epoch %d: loss %.4f val %s %.4f", tag, epoch, train_loss, stop_key, val[stop_key])
        if val[stop_key] > state["best_score"]:
            state.update(best_epoch=epoch, best_score=val[stop_key], best_val=val)
            best_matrices = matrices
            if keep_tables:
                best_tables = {k: v.cpu() for k, v in cf.raw_tables().items()}
        state["epoch"] = epoch
        if checkpointer:
            checkpointer.save(epoch, dmp, optimizer, state)
    if best_matrices is None:  # the best epoch ran before a resume (or no epoch ran at all)
        if checkpointer and 0 <= state["best_epoch"] != state["epoch"]:
            checkpointer.load(state["best_epoch"], dmp)
        best_matrices = _evaluate(dmp, cf, data.val, [data.train], ks, group)[1]
        best_tables = {k: v.cpu() for k, v in cf.raw_tables().items()} if keep_tables else None
    test = evaluate_ranking(*best_matrices, data.test, [data.train, data.val], ks, group=group)
    if writer:
        for k, v in test.items():
            writer.add_scalar(f"test/{k}", v, state["best_epoch"])
        writer.close()
    result: dict[str, Any] = {
        "val": state["best_val"],
        "test": test,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "wall_seconds": time.perf_counter() - start_time,
        "epochs": state["epoch"] + 1,
        "best_epoch": state["best_epoch"],
        "history": state["history"],
        "sharding": {name: p.sharding_type for name, p in plan.plan.get("ebc", {}).items()},
    }
    if keep_tables:
        result["tables"] = best_tables
    return result


@torch.no_grad()
def _evaluate(
    dmp: DistributedModelParallel,
    cf: CFModel,
    truth: CSR,
    exclude: list[CSR],
    ks: list[int],
    group: dist.ProcessGroup | None,
) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    dmp.eval()
    user_emb, item_emb = cf.final_embeddings()
    metrics = evaluate_ranking(user_emb, item_emb, truth, exclude, ks, group=group)
    dmp.train()
    return metrics, (user_emb, item_emb)
