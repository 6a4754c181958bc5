"""NASRec's search: supernet -> regularized evolution with scoring split over the ranks -> top-k finalists
(see `search/nasrec/__init__.py`)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from torchrec_aes import rundir
from torchrec_aes.architecture import Architecture
from torchrec_aes.io import exists, join, read_text, write_text_atomic
from torchrec_aes.models.block_graph import BlockGraph, BlockSpace
from torchrec_aes.models.blocks import BlockNet, BlocksHooks, blocks_architecture, dense_parameters
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.search.baselines import largest_uniform
from torchrec_aes.search.finalists import Finalist
from torchrec_aes.search.nasrec.config import NASRecConfig, check_config
from torchrec_aes.search.nasrec.evolution import EvolutionResult, evolve
from torchrec_aes.search.nasrec.report import nasrec_report
from torchrec_aes.search.nasrec.space import (
    Candidate,
    dcn_graph,
    dlrm_graph,
    mutate,
    random_candidate,
)
from torchrec_aes.search.nasrec.supernet import SubnetScorer, SupernetHooks, score_on_ranks
from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection, find_elastic
from torchrec_aes.supernet.scorer import dense_state, lookup_slice
from torchrec_aes.train.distributed import init_distributed
from torchrec_aes.train.trainer import Trainer

logger = logging.getLogger(__name__)

SCORES_FILE = "nasrec_scores.json"
"""Scores of the evolution so far (in the state directory): a rerun replays the same seeded evolution and
takes these instead of scoring again, so an interrupted search resumes where it stopped."""


def space_of(ncfg: NASRecConfig, model: Any) -> BlockSpace:
    """The search space of `search.nasrec` (its `cross` op sized as the run's DCN, `model.cross_*`)."""
    return BlockSpace(
        num_blocks=ncfg.num_blocks,
        space=ncfg.space,
        widths=tuple(sorted(set(ncfg.widths))),
        tokens=tuple(sorted(set(ncfg.tokens))),
        token_dim=ncfg.token_dim,
        merger_tokens=ncfg.merger_tokens,
        heads=ncfg.heads,
        cross_layers=model.cross_layers,
        cross_rank=model.cross_rank,
        layer_norm=ncfg.layer_norm,
        token_init=ncfg.token_init,
    )


def seed_graphs(ncfg: NASRecConfig, space: BlockSpace, model: Any) -> dict[str, BlockGraph]:
    """The hand-built models of `search.nasrec.seed_graphs` as graphs of `space`, by name; one the space
    cannot express (too few blocks, an op it lacks: the paper's op sets have neither `interact` nor
    `cross`) is left out, with a warning."""
    make = {
        "dlrm": lambda: dlrm_graph(space, list(model.dense_arch), list(model.over_arch)),
        "dcn": lambda: dcn_graph(space, list(model.over_arch)),
    }
    graphs = {}
    for name in ncfg.seed_graphs:
        try:
            graphs[name] = make[name]()
        except ValueError as e:
            logger.warning("search.nasrec.seed_graphs: %s left out (%s)", name, e)
    return graphs


def _scores_digest(scores: Any) -> str:
    return hashlib.sha256(json.dumps(scores, sort_keys=True).encode()).hexdigest()


def save_scores(path: str, identity: dict[str, Any], scores: dict[str, dict[str, float]]) -> None:
    """The scored subnets with the run's identity and a checksum of the scores (an edit is noticed)."""
    blob = {"identity": identity, "scores": scores, "sha256": _scores_digest(scores)}
    write_text_atomic(path, json.dumps(blob))


def load_scores(path: str, identity: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The saved scores of this run; {} (rescore) for another run's, or a damaged or edited file (said in
    one log line): a wrong score would silently pick another architecture."""
    if not exists(path):
        return {}
    try:
        blob = json.loads(read_text(path))
    except ValueError:
        blob = None
    scores = blob.get("scores") if isinstance(blob, dict) else None
    if not isinstance(scores, dict) or blob.get("sha256") != _scores_digest(scores):  # type: ignore[union-attr]
        logger.warning("%s: damaged or edited (its checksum does not match); the subnets are rescored", path)
        return {}
    return scores if blob.get("identity") == identity else {}  # type: ignore[union-attr]


def train_supernet(
    ctx: SearchContext,
    ncfg: NASRecConfig,
    space: BlockSpace,
    candidates: list[int],
    fixed_dims: list[int] | None,
) -> tuple[SubnetScorer, dict[str, Any]]:
    """Trains (or resumes) the supernet on all ranks and builds every rank's scorer from it."""
    cfg, task = ctx.cfg, ctx.task

    env = init_distributed()
    scfg = copy.deepcopy(cfg)
    scfg.train.epochs = ncfg.supernet_epochs
    scfg.train.dense_optimizer = "adagrad"
    scfg.train.dense_lr = ncfg.supernet_lr
    scfg.train.allreduce_precision = ncfg.allreduce_precision
    schema = task.schema
    num_dense = schema.num_dense
    steps = task.steps_per_epoch(env) * ncfg.supernet_epochs
    hooks = SupernetHooks(
        space,
        candidates,
        fixed_dims,
        cfg.train.seed,
        ncfg.warmup_steps,
        steps,
        ncfg.lr_warmup,
        ncfg.grad_clip,
        task,
    )

    def build(ebc: Any) -> BlockNet:
        return BlockNet(ElasticEmbeddingBagCollection(ebc, candidates), num_dense, space, None)

    # The supernet's checkpoints are per setting of the space and of its training and scoring (the
    # trainer's checkpoint identity covers `train` and `model`, not these): changing one starts afresh.
    settings = {**dataclasses.asdict(ncfg), "candidates": candidates, "fixed_dims": fixed_dims}
    for key in ("generations", "population", "sample_size", "children", "mutations", "top_k"):
        settings.pop(key)  # evolution settings: the same supernet serves them all
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    tag = f"nasrec/supernet_{digest}"
    trainer = Trainer(
        scfg,
        task,
        Architecture.uniform(schema, max(candidates)),
        run_dir=ctx.state_dir,
        tag=tag,
        hooks=hooks,
        build_model=build,
    )
    assert trainer.other is not None
    hooks.attach(trainer.other)
    for group in hooks.optimizer.param_groups if hooks.optimizer else []:
        group["eps"] = 1e-2  # NASRec's Adagrad epsilon
    fitted = trainer.fit(test=False)
    if trainer.checkpointer and 0 <= fitted["best_epoch"] < fitted["epochs_run"] - 1:
        trainer.restore(fitted["best_epoch"])
    t0 = time.perf_counter()
    bs = cfg.train.eval_batch_size
    slices = []
    for split, rows in (("train", ncfg.finetune_rows), ("val", ncfg.score_rows)):
        pooled, dense, labels, _ = lookup_slice(
            trainer.model, task.rows[split].head(rows), task.keys, bs, env
        )
        slices.append((pooled, dense, labels))  # NASRec's tables are all pooled: no collections
    scorer = SubnetScorer(
        space,
        num_dense,
        find_elastic(trainer.model).table_configs(),
        dense_state(trainer.model),
        slices[0],
        slices[1],
        ncfg.finetune_steps,
        ncfg.finetune_lr,
        ncfg.finetune_batch,
        cfg.train.seed,
    )
    log = {
        "tag": tag,
        "steps": fitted["steps"],
        "seconds": fitted["wall_seconds"],
        "history": fitted["history"],
        "slice_seconds": time.perf_counter() - t0,
        "scoring_rows": {"train": len(slices[0][2]), "val": len(slices[1][2])},
    }
    del trainer
    return scorer, log


@register("nasrec", tasks=("ctr",), section="nasrec", report=nasrec_report)
def nasrec_search(ctx: SearchContext) -> SearchResult:
    """NASRec: see `torchrec_aes/search/nasrec/__init__.py`."""
    cfg, ncfg, task = ctx.cfg, ctx.section, ctx.task
    assert isinstance(ncfg, NASRecConfig)
    check_config(ncfg)
    env = init_distributed()
    schema = task.schema
    space = space_of(ncfg, cfg.model)
    precision = cfg.search.precision
    num_tables = len(schema.sparse)
    graphs = seed_graphs(ncfg, space, cfg.model)
    uniform_dims = largest_uniform(ctx).dims if graphs or not ncfg.search_dims else []
    if ncfg.search_dims:
        candidates, fixed_dims = sorted(ctx.candidates), None
    else:
        candidates, fixed_dims = [uniform_dims[0]], uniform_dims

    bytes_of: dict[tuple[int, ...], int] = {}

    def used(dims: tuple[int, ...]) -> int:
        if dims not in bytes_of:
            bytes_of[dims] = ctx.budget.used(Architecture.from_dims(schema, list(dims), data_types=precision))
        return bytes_of[dims]

    dense_of: dict[str, int] = {}

    def dense(c: Candidate) -> int:
        """The candidate's dense parameters (memoised by its key)."""
        if c.key() not in dense_of:
            dense_of[c.key()] = dense_parameters(schema, list(c.dims), c.graph, space)
        return dense_of[c.key()]

    per_param = 1 if ctx.budget.count == "params" else 4

    def counted(c: Candidate) -> int:
        """What the budget counts of `c`: its tables, and its dense part with `count_dense`."""
        return used(c.dims) + (per_param * dense(c) if ncfg.count_dense else 0)

    def fits(c: Candidate) -> bool:
        return counted(c) <= ctx.budget.bytes

    smallest = tuple([min(candidates)] * num_tables)
    if used(smallest) > ctx.budget.bytes:
        raise ValueError(
            f"search.budget: {ctx.budget.bytes} bytes cannot hold any NASRec architecture (every table "
            f"at {min(candidates)} dims needs {used(smallest)} bytes); raise the budget or add smaller "
            "candidates"
        )

    def new_candidate(rng: random.Random) -> Candidate:
        cand = random_candidate(rng, space, num_tables, candidates, fixed_dims)
        dims = list(cand.dims)
        # Shrink random tables until it fits (with count_dense, a dense part too large for the budget
        # leaves a candidate that does not fit: the evolution draws another).
        while not fits(Candidate(cand.graph, tuple(dims))) and max(dims) > candidates[0]:
            t = rng.choice([i for i, d in enumerate(dims) if d > candidates[0]])
            dims[t] = max(c for c in candidates if c < dims[t])
        return Candidate(cand.graph, tuple(dims))

    # The hand-built models start at the largest uniform candidate dim that fits.
    fitting = [c for c in candidates if uniform_dims and c <= uniform_dims[0]]
    seed_dims = tuple([max(fitting)] * num_tables) if fitting else ()
    if not fitting:
        graphs = {}

    def child(rng: random.Random, parent: Candidate, m: int) -> Candidate:
        return mutate(rng, parent, space, candidates, m, fixed_dims is None)

    t0 = time.perf_counter()
    scorer, supernet_log = train_supernet(ctx, ncfg, space, candidates, fixed_dims)
    supernet_seconds = time.perf_counter() - t0

    # Resume: scores of an interrupted evolution on the same supernet are taken, not recomputed.
    path = join(ctx.state_dir, SCORES_FILE) if ctx.state_dir else ""
    identity = {
        "supernet": supernet_log["tag"],
        "steps": supernet_log["steps"],
        "train": dataclasses.asdict(cfg.train),
        "schema": schema.hash(),
    }
    if path and cfg.train.resume:
        scorer.cache.update(load_scores(path, identity))
    resumed = len(scorer.cache)

    def score_many(cands: Sequence[Candidate]) -> list[float]:
        return [s["score"] for s in score_on_ranks(scorer, cands)]

    writer = (
        SummaryWriter(rundir.tb_dir(ctx.run_dir, "nasrec/evolution")) if ctx.run_dir and env.is_main else None
    )
    bar = tqdm(
        total=ncfg.generations + 1,
        desc="nasrec evolution",
        disable=not (cfg.train.progress and env.is_main),
        leave=False,
        dynamic_ncols=True,
    )

    def checkpoint(gen: int, result: EvolutionResult) -> None:
        bar.update(1)
        if path and env.is_main:
            save_scores(path, identity, scorer.cache)
        if writer:
            writer.add_scalar("evolution/best_score", result.best_per_generation[-1], gen + 1)
            writer.add_scalar("evolution/scored", len(result.scored), gen + 1)
        if env.is_main and gen >= 0 and (gen + 1) % 10 == 0:
            logger.info("nasrec generation %d: best score %.5f", gen, result.best_per_generation[-1])

    t1 = time.perf_counter()
    result = evolve(
        score_many,
        new_candidate,
        child,
        fits,
        random.Random(cfg.train.seed),
        ncfg.population,
        ncfg.sample_size,
        ncfg.children,
        ncfg.generations,
        ncfg.mutations,
        on_generation=checkpoint,
        seeds=[Candidate(g, seed_dims) for g in graphs.values()],
    )
    seeded = [
        {"name": name, "key": c.key(), **scorer.cache[c.key()]}
        for name, c in ((n, Candidate(g, seed_dims)) for n, g in graphs.items())
        if c.key() in scorer.cache
    ]
    evolution_seconds = time.perf_counter() - t1
    bar.close()
    if writer:
        writer.close()

    top = result.top(ncfg.top_k)
    finalists = []
    for i, (cand, _) in enumerate(top):
        arch = blocks_architecture(schema, list(cand.dims), cand.graph, space, precision)
        finalists.append(
            Finalist("nasrec" if i == 0 else f"nasrec_{i + 1}", arch, hooks=BlocksHooks(cand.graph, space))
        )
    best = finalists[0].arch
    log: dict[str, Any] = {
        "space": space.to_dict(),
        "search_dims": ncfg.search_dims,
        "count_dense": ncfg.count_dense,
        "supernet": supernet_log,
        "supernet_seconds": supernet_seconds,
        "evolution_seconds": evolution_seconds,
        "world_size": env.world_size,
        "scored": len(result.scored),
        "scored_here": scorer.evaluations,
        "resumed_scores": resumed,
        "best_per_generation": result.best_per_generation,
        "seeded": seeded,
        "best_blocks": top[0][0].graph.to_dict(),
        "top": [
            {
                "key": c.key(),
                "score": s,
                **scorer.score(c),
                "dims": list(c.dims),
                "bytes": used(c.dims),
                "dense_params": dense(c),
            }
            for c, s in top
        ],
    }
    landscape = {
        "x": "embedding bytes",
        "y": "supernet score (-val logloss after fine-tuning the final layer)",
        "points": [[used(c.dims), s] for c, s in result.scored],
        "named": {f.label: [used(c.dims), s] for f, (c, s) in zip(finalists, top, strict=True)},
    }
    if env.is_main:
        logger.info(
            "nasrec: %d scored in %.0f s (%d processes), best score %.5f",
            len(result.scored),
            evolution_seconds,
            env.world_size,
            top[0][1],
        )
    return SearchResult(best, log=log, finalists=finalists, landscape=landscape)
