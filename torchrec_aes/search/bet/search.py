"""BET's search loop, its baselines (SU, SR) and its finalists (the top candidates and SU), which the
shared final pick trains from scratch (`search/finalists.py`)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from torchrec_aes import rundir
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.interactions import InteractionData
from torchrec_aes.io import join, makedirs
from torchrec_aes.models.cf import TableHooks
from torchrec_aes.models.rowwise import BucketLayout, RowCost, bucket_architecture
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.search.bet.predictor import FitnessPredictor, PredictorTrainer, normalised_frequency
from torchrec_aes.search.bet.sampler import Action, ActionSampler
from torchrec_aes.search.finalists import Finalist
from torchrec_aes.search.state import load_state, save_state, state_identity
from torchrec_aes.tasks.base import Task
from torchrec_aes.train.distributed import broadcast_object, init_distributed
from torchrec_aes.train.trainer import Trainer

logger = logging.getLogger(__name__)

PICK_RULES = ("argmax", "random", "nearest")


def quality(metrics: dict[str, float], ks: list[int]) -> float:
    """Mean of Recall@K and NDCG@K over `ks` (BET's fitness numerator)."""
    return sum(metrics[f"recall@{k}"] + metrics[f"ndcg@{k}"] for k in ks) / (2 * len(ks))


def _with_epochs(cfg: Config, epochs: int) -> Config:
    out = copy.deepcopy(cfg)
    out.train.epochs = epochs
    return out


def _finalists(
    cfg: Config, task: Task, method: str, candidates: list[Action], log: dict[str, Any]
) -> SearchResult:
    """The candidates as finalists for the final pick (`search/finalists.py`): each row-wise candidate is
    deployed as size buckets and trained in its masked form; the same-budget uniform (SU) is an ordinary
    uniform architecture. `run_search` trains them from scratch and keeps the best on validation."""
    schema = task.schema
    precision = cfg.search.bet.precision
    full_arch = Architecture.uniform(schema, cfg.search.bet.max_dim, precision)
    finalists = []
    for j, action in enumerate(candidates):
        uniform_dim = action.info.get("uniform_dim")
        if uniform_dim:  # SU: a physical uniform table is the same model, without the mask
            finalists.append(Finalist("bet_su", Architecture.uniform(schema, uniform_dim, precision)))
            continue
        layout = BucketLayout.from_row_dims(action.as_dict())
        arch = bucket_architecture(layout, method, precision)
        arch.extra.update(layout.extra())
        arch.extra["max_dim"] = cfg.search.bet.max_dim
        label = method if len(candidates) == 1 else f"{method}_{j}"
        hooks = TableHooks(row_dims=action.as_dict())
        finalists.append(Finalist(label, arch, full_arch, hooks, save=layout.save))
    log["candidates"] = [
        {
            "label": f.label,
            "info": c.info,
            "row_dims": {
                feat: {"mean": float(d.float().mean()), "min": int(d.min()), "max": int(d.max())}
                for feat, d in c.as_dict().items()
            },
        }
        for f, c in zip(finalists, candidates, strict=False)
    ]
    return SearchResult(finalists[0].arch, log, finalists=finalists, add_baselines=method == "bet")


def _sampler(cfg: Config, data: InteractionData, budget: Budget) -> ActionSampler:
    bc = cfg.search.bet
    cost = RowCost.of(budget.optimizer, budget.count, bc.precision)
    return ActionSampler(
        data.user_freq, data.item_freq, budget.bytes, cost, bc.max_dim, bc.multiple, bc.max_redraws
    )


def bet_search(
    cfg: Config, task: Task, budget: Budget, run_dir: str = "", variant: str = "bet"
) -> SearchResult:
    """Runs BET (`variant="bet"`) or a baseline ("bet_su", "bet_sr") on CF data under `budget`.

    Args:
        cfg: run config (`search.bet`, `model.type` mf|lightgcn, `train.*`).
        task: the CF task (interactions with per-user train/val/test).
        budget: bytes of the bucket tables by TorchRec's estimate, or parameters.
        run_dir: where the `bet/` state and `tb/bet` go ("" = nowhere; no resume).
        variant: "bet" | "bet_su" | "bet_sr".

    Returns:
        A log and the finalists: the top `search.bet.top_k` candidates (and, for "bet", SU), or the one
        baseline action; `run_search` trains them from scratch and keeps the best on validation.
    """
    data = task.data
    bc = cfg.search.bet
    if bc.precision not in ("fp32", "fp16"):
        raise ValueError(f"search.bet.precision: '{bc.precision}' is not one of fp32, fp16")
    if bc.precision == "fp16" and budget.count == "params":
        raise ValueError("search.bet.precision: fp16 saves bytes, not parameters; use search.count=bytes")
    unknown = [r for r in bc.schedule if r not in PICK_RULES]
    if unknown or not bc.schedule:
        raise ValueError(
            f"search.bet.schedule: {bc.schedule} must be a non-empty list of {', '.join(PICK_RULES)}"
        )
    sampler = _sampler(cfg, data, budget)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    log: dict[str, Any] = {"variant": variant, "free_quanta": sampler.free}
    if variant == "bet_su":
        return _finalists(cfg, task, variant, [sampler.uniform()], log)
    if variant == "bet_sr":
        return _finalists(cfg, task, variant, [sampler.sample(gen)], log)
    if variant != "bet":
        raise ValueError(f"BET variant '{variant}' is not one of bet, bet_su, bet_sr")

    ks = list(cfg.train.ranking_k)
    main = init_distributed().is_main
    state_dir = rundir.method_dir(run_dir, "bet") if run_dir else ""
    if state_dir and main:
        makedirs(state_dir)
    full_arch = Architecture.uniform(data.schema, bc.max_dim, bc.precision)

    # Pre-train the full-size model once (kept across resumes).
    pre_path = join(state_dir, "pretrained.pt") if state_dir else ""
    resume = bc.resume and cfg.train.resume  # train.resume=false starts every phase fresh
    # Saved state carries the run's identity (`search.state`): the pre-trained model depends on the data
    # and training config; the loop's state also on the budget and the BET settings.
    pre_id = state_identity(cfg, task, {"bet.max_dim": bc.max_dim, "bet.precision": bc.precision})
    # Not in it: how far the loop goes (`iterations`), what is kept of it (`top_k`) and `resume` itself.
    bet_settings = {
        k: v for k, v in dataclasses.asdict(bc).items() if k not in ("iterations", "top_k", "resume")
    }
    loop_id = state_identity(
        cfg, task, {"bet": bet_settings, "variant": variant, "count": budget.count}, budget.bytes
    )
    pre = load_state(pre_path, pre_id, weights_only=False) if pre_path and resume else None
    if pre is None:
        keep = TableHooks(keep_tables=True)
        res = Trainer(cfg, task, full_arch, run_dir, "bet/pretrain", hooks=keep).fit()
        pre = {"tables": keep.best_tables, "val": res["val"]}
        if pre_path and main:
            save_state(pre_path, pre, pre_id)
    full_quality = quality(pre["val"], ks)
    log["full_model"] = {"val": pre["val"], "quality": full_quality}

    predictor = FitnessPredictor(normalised_frequency(data), bc.max_dim, bc.multiple)
    trainer = PredictorTrainer(predictor, bc.predictor_lr, bc.predictor_lr_decay, bc.predictor_min_lr)
    replay: list[dict[str, Any]] = []
    start_iter = 0
    state_path = join(state_dir, "state.pt") if state_dir else ""
    state = load_state(state_path, loop_id, weights_only=False) if state_path and resume else None
    if state is not None:
        replay, start_iter = state["replay"], state["iteration"]
        trainer.load_state_dict(state["predictor"])
        gen.set_state(state["generator"])
        logger.info("BET: resuming at iteration %d with %d evaluated actions", start_iter, len(replay))

    writer = SummaryWriter(rundir.tb_dir(run_dir, "bet")) if run_dir and main else None
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
        start = TableHooks(init_tables=pre["tables"], row_dims=action.as_dict())
        res = Trainer(finetune_cfg, task, full_arch, "", f"bet/finetune_{it}", hooks=start).fit()
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
            save_state(
                state_path,
                {
                    "replay": replay,
                    "iteration": it + 1,
                    "predictor": trainer.state_dict(),
                    "generator": gen.get_state(),
                },
                loop_id,
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
    # SU joins the finalists: with MF on Gowalla it beat BET at 80/90% sparsity.
    return _finalists(cfg, task, variant, [*candidates, sampler.uniform()], log)


@register("bet", tasks=("cf",), section="bet")
def bet(ctx: SearchContext) -> SearchResult:
    """BET: budget-guaranteed per-row sizes, a DeepSets fitness predictor (see the package doc)."""
    return bet_search(ctx.cfg, ctx.task, ctx.budget, ctx.run_dir, "bet")


@register("bet_su", tasks=("cf",), section="bet")
def bet_su(ctx: SearchContext) -> SearchResult:
    """The paper's same-budget uniform (SU) baseline."""
    return bet_search(ctx.cfg, ctx.task, ctx.budget, ctx.run_dir, "bet_su")


@register("bet_sr", tasks=("cf",), section="bet")
def bet_sr(ctx: SearchContext) -> SearchResult:
    """The paper's one-random-action (SR) baseline."""
    return bet_search(ctx.cfg, ctx.task, ctx.budget, ctx.run_dir, "bet_sr")
