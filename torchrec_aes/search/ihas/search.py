"""iHAS's search: gated model -> deterministic gates -> K-Means groups -> router -> group dims under the
budget -> finalists (see `search/ihas/__init__.py`)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.dataset import CTRData, Rows, batch_rows, concat_rows, make_batch
from torchrec_aes.data.planted import resolve_population_ranks
from torchrec_aes.data.synthetic import load_populations
from torchrec_aes.io import join, save_numpy_atomic, save_torch_atomic
from torchrec_aes.models.grouped import GroupedHooks, GroupLayout, Router, grouped_architecture, router_tables
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.search.finalists import Finalist
from torchrec_aes.search.ihas.cluster import adjusted_rand_index, assign, minibatch_kmeans, spearman
from torchrec_aes.search.ihas.config import IHASConfig, check_config, group_counts
from torchrec_aes.search.ihas.gates import BLOCK, GateHooks
from torchrec_aes.search.ihas.router import fit_router
from torchrec_aes.tasks.ctr import data_cache_dir
from torchrec_aes.train.distributed import DistEnv, init_distributed
from torchrec_aes.train.trainer import Trainer

logger = logging.getLogger(__name__)

CENTROIDS_FILE = "centroids.pt"
TEST_GROUPS_FILE = "test_groups.npy"


def _gather_rows(local: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenates every rank's rows (rank order); ranks may hold different counts."""
    if env.world_size == 1:
        return local
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(env.world_size)]
    dist.all_gather(sizes, torch.tensor([len(local)]))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def _gather_bags(local: CTRData, env: DistEnv) -> CTRData:
    """Every rank's bags (rank order), ids only: lengths and ids gathered per rank, then concatenated."""
    if env.world_size == 1:
        return local
    lengths = local.lengths if local.lengths is not None else torch.ones_like(local.sparse)
    values = local.sparse if local.lengths is not None else local.sparse.t().reshape(-1)
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(env.world_size)]
    dist.all_gather(counts, torch.tensor([len(local)]))
    all_lengths = _gather_rows(lengths, env)
    all_values = _gather_rows(values, env)
    parts, row, at = [], 0, 0
    for c in counts:
        n = int(c.item())
        part_lengths = all_lengths[row : row + n]
        size = int(part_lengths.sum())
        parts.append(CTRData(torch.zeros(n, 0), all_values[at : at + size], torch.zeros(n), part_lengths))
        row, at = row + n, at + size
    return concat_rows(parts)


@torch.no_grad()
def collect(trainer: Trainer, hooks: GateHooks, data: Rows, rows: int) -> dict[str, Any]:
    """Masked embeddings, active dims and ids of the first `rows` rows of `data` under deterministic gates,
    gathered from all ranks (the same on every rank)."""
    env, task = trainer.env, trainer.task
    assert hooks.gated is not None
    part = data.head(rows)
    gated = hooks.gated
    gated.capture = []
    ids = []
    trainer.model.eval()
    keys = task.schema.sparse_names  # the gated model uses every feature
    for batch in part.batches(keys, task.cfg.train.eval_batch_size, env.rank, env.world_size):
        trainer.model(batch.to(env.device))
        ids.append(batch_rows(batch, keys))
    trainer.model.train()
    masked = torch.cat([m for m, _ in gated.capture]).cpu()
    active = torch.cat([a for _, a in gated.capture]).cpu()
    gated.capture = None
    return {
        "masked": _gather_rows(masked, env),
        "active": _gather_rows(active, env),
        "ids": _gather_bags(concat_rows(ids), env),
    }


def group_dims(mean_active: torch.Tensor, scale: float, cap: int) -> list[list[int]]:
    """[K, F] mean active dims -> multiples of 4 of scale x mean, capped; every group keeps >= 1 field."""
    dims = (mean_active * scale / BLOCK).round().clamp(0, cap // BLOCK).long() * BLOCK
    for k in range(len(dims)):
        if int(dims[k].sum()) == 0:
            dims[k, int(mean_active[k].argmax())] = BLOCK
    return dims.tolist()


def shares_of(mean_active: torch.Tensor, widths: list[int]) -> list[list[int]]:
    """Shared tables of `widths` columns: group k reads W_f x mean_active[k, f] / max_j mean_active[j, f]
    of field f (multiples of 4; the most active group the whole width); every group keeps >= 1 field."""
    top = mean_active.max(dim=0).values.clamp(min=1e-9)  # [F]
    share = mean_active / top
    dims = ((share * torch.tensor(widths, dtype=share.dtype) / BLOCK).round().long() * BLOCK).tolist()
    for k, row in enumerate(dims):
        if not any(row):
            f = int(mean_active[k].argmax())
            row[f] = BLOCK if widths[f] else 0
            if not any(row):
                f = max(range(len(widths)), key=lambda j: widths[j])
                row[f] = min(BLOCK, widths[f])
    return dims


def fit_dims(
    ctx: SearchContext, icfg: IHASConfig, mean_active: torch.Tensor, router: Router
) -> tuple[GroupLayout, Router, float]:
    """The group dims under the budget with the router.

    The largest scale s <= 1 of the mean active dims whose architecture fits, by bisection (bytes grow
    with s); then, with `fill_budget`, the rest of the budget, 4 dims at a time (capped at the base dim):
    shared tables grow the field with the most gate activity per column and every group keeps its share
    of the width (`shares_of`); separate tables grow the (group, field) with the most activity per dim.

    Raises:
        ValueError: not even one 4-dim field per group (and the router) fits; names the smallest size.
    """
    schema, cap = ctx.schema, max(ctx.candidates)
    features = schema.sparse_names
    rows = [f.num_embeddings for f in schema.sparse]
    dtype = ctx.cfg.search.precision

    def build(dims: list[list[int]], r: Router) -> tuple[Architecture, GroupLayout, Router]:
        layout = GroupLayout(features, rows, dims, icfg.deployment, dtype)
        widths = dict(zip(features, layout.widths(), strict=True))
        keep = [i for i, f in enumerate(r.features) if widths[f] > 0]
        if len(keep) < len(r.features):  # the router reads only fields some group uses
            r = Router([r.features[i] for i in keep], [r.table(i) for i in keep], r.log_prior)
        return grouped_architecture(layout, r.features, icfg.router_data_type, schema), layout, r

    cheapest = min(range(len(features)), key=lambda f: rows[f])
    minimal = [[BLOCK if f == cheapest else 0 for f in range(len(features))] for _ in range(len(mean_active))]
    arch, layout, r = build(minimal, router)
    if not ctx.budget.fits(arch):
        raise ValueError(
            f"search.budget: {ctx.budget.bytes} bytes cannot hold {layout.num_groups} groups of iHAS (the "
            f"smallest grouped architecture, every group at 4 dims of the smallest table, needs "
            f"{ctx.budget.used(arch)} bytes); raise the budget or lower search.ihas.num_groups"
        )
    low, high = 0.0, 1.0
    if not ctx.budget.fits(build(group_dims(mean_active, 0.0, cap), router)[0]):
        low = -1.0  # not even each group's most active field fits: start from the minimal layout
    elif ctx.budget.fits(build(group_dims(mean_active, 1.0, cap), router)[0]):
        low = 1.0
    else:
        for _ in range(30):
            mid = (low + high) / 2
            fits = ctx.budget.fits(build(group_dims(mean_active, mid, cap), router)[0])
            low, high = (mid, high) if fits else (low, mid)
    dims = minimal if low < 0 else group_dims(mean_active, low, cap)
    if icfg.fill_budget and icfg.deployment == "shared":
        # Bytes depend on each field's width W_f only; a group keeps its share of the width, in proportion
        # to its gate activity (growing a narrower group to W_f would be free, and would erase the groups'
        # differences). Grow the field with the most activity per column, 4 at a time, while it fits.
        widths = [max(row[f] for row in dims) for f in range(len(features))]
        full_fields: set[int] = set()
        while True:
            options = [
                (float(mean_active[:, f].max()) / (widths[f] + BLOCK), f)
                for f in range(len(features))
                if widths[f] < cap and f not in full_fields
            ]
            if not options:
                break
            _, f = max(options)
            widths[f] += BLOCK
            trial = shares_of(mean_active, widths)
            if ctx.budget.fits(build(trial, router)[0]):
                dims = trial
            else:
                widths[f] -= BLOCK
                full_fields.add(f)
    elif icfg.fill_budget:
        # Separate tables: every (group, field) costs bytes; grow the one with the most gate activity per
        # dim it has, mean_active / (d + 4), 4 at a time, while it fits.
        full: set[tuple[int, int]] = set()
        while True:
            pairs = [
                (float(mean_active[k, f]) / (dims[k][f] + BLOCK), k, f)
                for k in range(len(dims))
                for f in range(len(features))
                if dims[k][f] < cap and (k, f) not in full
            ]
            if not pairs:
                break
            _, k, f = max(pairs)
            dims[k][f] += BLOCK
            if not ctx.budget.fits(build(dims, router)[0]):
                dims[k][f] -= BLOCK
                full.add((k, f))
    arch, layout, r = build(dims, router)
    return layout, r, max(low, 0.0)


def _route_ids(router: Router, ids: CTRData, keys: list[str]) -> torch.Tensor:
    """[N] the router's group of each row of `ids` (bags of `keys`)."""
    return router(make_batch(ids, torch.arange(len(ids)), keys).sparse_features)


def route_split(router: Router, data: Rows, keys: list[str], batch_size: int, world_size: int) -> np.ndarray:
    """The group of every row of `data` in the order a test pass with `world_size` ranks scores them."""
    out = []
    for rank in range(world_size):
        for batch in data.batches(keys, batch_size, rank, world_size):
            out.append(router(batch.sparse_features))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _rank_agreement(
    cfg: Any,
    populations: dict[str, torch.Tensor] | None,
    labels: torch.Tensor,
    mean_active: torch.Tensor,
    dims: list[list[int]],
) -> dict[str, Any]:
    """On planted synthetic data: Spearman's correlation of each group's gate activity and dims with the
    planted ranks of its majority population (one population: the planted ranks), averaged over groups."""
    syn = cfg.data.synthetic
    ranks = resolve_population_ranks(syn)
    rows = list(syn.cardinalities)
    truth = [[min(r, n - 1) for r, n in zip(row, rows, strict=True)] for row in ranks]  # what ids realise
    majority = [0] * len(mean_active)
    if populations is not None:
        members = populations["train"][: len(labels)]
        majority = [
            int(torch.bincount(members[labels == g], minlength=syn.populations).argmax())
            if bool((labels == g).any())
            else 0
            for g in range(len(mean_active))
        ]
    gates = [spearman(mean_active[g].tolist(), truth[p]) for g, p in enumerate(majority)]
    sized = [spearman([float(d) for d in dims[g]], truth[p]) for g, p in enumerate(majority)]
    return {
        "group_population": majority,
        "gates": sum(gates) / len(gates),
        "dims": sum(sized) / len(sized),
        "per_group": [{"gates": a, "dims": b} for a, b in zip(gates, sized, strict=True)],
    }


def _candidate(
    ctx: SearchContext,
    icfg: IHASConfig,
    k: int,
    sample: dict[str, Any],
    val_sample: dict[str, Any],
    populations: dict[str, torch.Tensor] | None,
) -> tuple[Finalist, dict[str, Any]]:
    """K groups from the gated sample: K-Means, the router (with hard-EM rounds), the dims under the
    budget. Returns the finalist (K = 1: a plain per-table architecture) and its search log.
    `populations`: the planted populations' rows of planted data with several (None otherwise)."""
    cfg, schema, env = ctx.cfg, ctx.task.schema, init_distributed()
    rows = [f.num_embeddings for f in schema.sparse]
    centres, labels = minibatch_kmeans(
        sample["masked"], k, seed=cfg.train.seed, iters=icfg.kmeans_iters, batch=icfg.kmeans_batch
    )
    active = sample["active"].float()  # [N, F]
    # The router (its share of the budget first), then the group dims filling the rest.
    cap = icfg.router_share * ctx.budget.bytes

    def router_fits(features: list[str]) -> bool:
        arch = Architecture(
            router_tables(
                features, dict(zip(schema.sparse_names, rows, strict=True)), k, icfg.router_data_type
            )
        )
        return ctx.budget.used(arch) <= cap

    router, field_gains = fit_router(
        sample["ids"], labels, schema.sparse_names, rows, k, icfg.router_smoothing, router_fits
    )
    kmeans_labels = labels
    for _ in range(icfg.router_rounds if k > 1 else 0):
        # Hard EM on the router's naive-Bayes model: the groups become what the router serves (the group
        # models train on the rows the router sends them), starting from the K-Means groups.
        routed = _route_ids(router, sample["ids"], schema.sparse_names)
        if bool((routed == labels).all()):
            break
        labels = routed
        router, field_gains = fit_router(
            sample["ids"], labels, schema.sparse_names, rows, k, icfg.router_smoothing, router_fits
        )
    mean_active = torch.stack(
        [
            active[labels == g].mean(0) if bool((labels == g).any()) else torch.zeros(active.shape[1])
            for g in range(k)
        ]
    )
    layout, router, scale = fit_dims(ctx, icfg, mean_active, router)
    arch = grouped_architecture(layout, router.features, icfg.router_data_type, schema)
    router_arch = Architecture([t for t in arch.tables if t.name.startswith("router_")], kind="tables")
    router_bytes = ctx.budget.used(router_arch) if router_arch.tables else 0

    # Router accuracy: does it send held-out rows to the group of their nearest centroid?
    val_groups = assign(val_sample["masked"], centres)
    val_rows = ctx.splits.val.head(len(val_groups))
    routed = torch.cat(
        [router(b.sparse_features) for b in val_rows.batches(schema.sparse_names, len(val_groups))]
    )
    accuracy = float((routed == val_groups).float().mean())
    sizes = torch.bincount(labels, minlength=k).tolist()
    log: dict[str, Any] = {
        "num_groups": k,
        "scale": scale,
        "groups": [
            {
                "share": sizes[g] / max(len(labels), 1),
                "mean_active": [round(float(v), 2) for v in mean_active[g]],
                "dims": layout.dims[g],
            }
            for g in range(k)
        ],
        "router": {
            "features": router.features,
            "bytes": router_bytes,
            "share_of_budget": router_bytes / max(ctx.budget.bytes, 1),
            "accuracy": accuracy,
            "field_gains": field_gains,
        },
    }
    if ctx.planted_ranks is not None:  # planted synthetic data (not a user's own)
        log["rank_spearman"] = _rank_agreement(cfg, populations, labels, mean_active, layout.dims)
    if populations is not None and k > 1:
        # Planted populations (hidden from the model): how well do the groups recover them?
        truth = populations["train"][: len(labels)]
        log["population_ari_kmeans"] = adjusted_rand_index(kmeans_labels, truth)
        log["population_ari"] = adjusted_rand_index(labels, truth)
        log["population_ari_router_test"] = adjusted_rand_index(
            torch.from_numpy(
                route_split(router, ctx.splits.test, schema.sparse_names, cfg.train.eval_batch_size, 1)
            ),
            populations["test"][: len(ctx.splits.test)],
        )
    if env.is_main:
        logger.info(
            "ihas: K=%d groups %s, dims %s, router %d fields (%.1f%% of budget, accuracy %.3f)",
            k,
            [round(g["share"], 3) for g in log["groups"]],
            layout.dims,
            len(router.features),
            100 * log["router"]["share_of_budget"],
            accuracy,
        )
    name = f"ihas_k{k}"
    if k == 1:  # one group: a plain per-table architecture, trained and served as `model.type`
        return Finalist(name, layout.train_arch(schema)), log

    def save(run_dir: str) -> None:
        router.save(run_dir)
        save_torch_atomic(
            join(run_dir, CENTROIDS_FILE), {"centroids": centres, "features": schema.sparse_names}
        )
        groups = route_split(
            router, ctx.splits.test, schema.sparse_names, cfg.train.eval_batch_size, env.world_size
        )
        save_numpy_atomic(join(run_dir, TEST_GROUPS_FILE), groups)

    finalist = Finalist(
        name, arch, train_arch=layout.train_arch(schema), hooks=GroupedHooks(layout, router), save=save
    )
    return finalist, log


@register("ihas", tasks=("ctr",), section="ihas", user_model=True)
def ihas_search(ctx: SearchContext) -> SearchResult:
    """iHAS: see `torchrec_aes/search/ihas/__init__.py`."""
    cfg, icfg, task = ctx.cfg, ctx.section, ctx.task
    assert isinstance(icfg, IHASConfig)
    check_config(icfg)
    schema = task.schema
    base = max(ctx.candidates)
    counts = group_counts(icfg)

    # 1. The gated search model (the one trainer; the gates' regularisers through the hooks).
    scfg = copy.deepcopy(cfg)
    scfg.train.epochs = icfg.search_epochs
    rows = [f.num_embeddings for f in schema.sparse]
    full = Architecture.uniform(schema, base, cfg.search.precision)
    router_share = icfg.router_share if max(counts) > 1 else 0.0
    target = min(1.0, (1 - router_share) * ctx.budget.bytes / max(ctx.budget.used(full), 1))
    if icfg.deployment == "separate":  # the groups' tables add up: each group gets ~1/K of the bytes
        target /= max(counts)
    weights = (
        [r / sum(rows) for r in rows] if icfg.sparsity_weights == "rows" else [1 / len(rows)] * len(rows)
    )
    hooks = GateHooks(
        icfg.controller_hidden,
        icfg.gates,
        icfg.gate_init,
        weights,
        target,
        icfg.sparsity_lr,
        icfg.polarization_weight,
        signed=icfg.dual == "signed",
        logit_bound=icfg.gate_logit_bound,
    )
    trainer = Trainer(scfg, task, Architecture.uniform(schema, base), ctx.run_dir, "ihas/search", hooks=hooks)
    fitted = trainer.fit(test=False)

    # 2. Deterministic gates on a training sample (the same on every rank); then per candidate K: K-Means
    # on the masked embeddings, the router, the group dims under the budget -- one finalist each.
    sample = collect(trainer, hooks, ctx.splits.train, icfg.cluster_rows)
    val_sample = collect(trainer, hooks, ctx.splits.val, max(icfg.cluster_rows // 4, 2))
    planted = ctx.planted_ranks is not None and cfg.data.synthetic.populations > 1
    populations = load_populations(cfg.data, data_cache_dir(cfg)) if planted else None
    finalists: list[Finalist] = []
    candidates: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for k in sorted({min(c, len(sample["masked"])) for c in counts}):
        try:
            finalist, log_k = _candidate(ctx, icfg, k, sample, val_sample, populations)
        except ValueError as e:  # this K does not fit the budget: keep the smaller K that do
            if not finalists:
                raise
            skipped.append({"num_groups": k, "reason": str(e)})
            logger.warning("ihas: K=%d skipped: %s", k, e)
            continue
        finalists.append(finalist)
        candidates.append(log_k)
    log: dict[str, Any] = {
        "base_dim": base,
        "search_history": fitted["history"],
        "gate_open_share": float(sample["active"].float().mean() / base),
        "kept_target": target,
        "kept_per_epoch": hooks.epochs,
        "sparsity_weight": hooks.sparsity,
        "deployment": icfg.deployment,
        "candidates": candidates,
        "skipped": skipped,
    }
    # Ascending K: on a tie the simpler model comes first.
    return SearchResult(finalists[0].arch, log=log, finalists=finalists)
