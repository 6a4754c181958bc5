"""NASRec on 2 gloo ranks: the tiny search (sharded supernet, slices gathered on every rank, scoring split
over the ranks, final pick of the blocks model) completes and both ranks end with the same architecture
and metrics; and the evolution whose children are scored split over 2 ranks (`score_on_ranks`) is the
evolution one process would run with the same scorer -- the same candidates scored in the same order to
the same scores -- with each rank scoring only its share."""

from __future__ import annotations

import random

import pytest
import torch
import yaml
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from tests.conftest import REPO
from tests.distributed.launcher import run_ranks
from torchrec_aes.config import load_config
from torchrec_aes.data.synthetic import load_synthetic

pytestmark = pytest.mark.distributed
NASREC_TINY = str(REPO / "configs" / "tests" / "nasrec_tiny.yaml")


def _overrides(run_dir: str, cache: str) -> list[str]:
    return [f"run_dir={run_dir}", f"data.cache_dir={cache}"]


def _search(rank: int, world_size: int, run_dir: str, cache: str) -> dict:
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    from torchrec_aes.runs import run_search

    metrics = run_search(load_config(NASREC_TINY, _overrides(run_dir, cache)))
    return {
        "world_size": metrics["world_size"],
        "search_log": metrics["search_log"],
        "dims": metrics["dims"],
        "winner": metrics["winner"],
        # Each rank measures its own wall times; everything else must be the same.
        "finalists": [{k: v for k, v in f.items() if k != "seconds"} for f in metrics["finalists"]],
        "budget_used": metrics["budget_used"],
        "budget_bytes": metrics["budget_bytes"],
        "test": metrics["test"],
    }


def test_two_ranks_search_to_the_same_architecture_and_metrics(tmp_path):
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    load_synthetic(load_config(NASREC_TINY, _overrides(str(run), cache)).data, cache)  # data once, first
    r0, r1 = run_ranks(_search, str(run), cache, world_size=2)
    assert r0["world_size"] == r1["world_size"] == 2
    log0, log1 = r0["search_log"], r1["search_log"]
    assert log0["world_size"] == log1["world_size"] == 2
    for key in ("space", "scored", "best_per_generation", "top", "resumed_scores"):
        assert log0[key] == log1[key], key
    assert log0["supernet"]["steps"] == log1["supernet"]["steps"]
    assert log0["supernet"]["scoring_rows"] == log1["supernet"]["scoring_rows"]  # the gathered slices
    # Each rank scored its share of every generation, nothing twice.
    assert log0["scored_here"] > 0 and log1["scored_here"] > 0
    assert log0["scored_here"] + log1["scored_here"] == log0["scored"]
    assert r0["dims"] == r1["dims"] and r0["winner"] == r1["winner"] and r0["test"] == r1["test"]
    assert r0["finalists"] == r1["finalists"]
    assert r0["budget_used"] <= r0["budget_bytes"]
    # Rank 0 wrote the run directory: the architecture is the one both ranks chose.
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert [t["embedding_dim"] for t in arch["tables"]] == list(r0["dims"].values())
    if r0["winner"].startswith("nasrec"):
        assert arch["kind"] == "blocks" and arch["extra"]["space"] == log0["space"]
        top = log0["top"][0 if r0["winner"] == "nasrec" else 1]
        assert [t["embedding_dim"] for t in arch["tables"]] == top["dims"]


# ---------------------------------------------------------------------------------------------------------
# The evolution scored over 2 ranks is the serial evolution
# ---------------------------------------------------------------------------------------------------------

FEATURES = ["c0", "c1", "c2", "c3"]
CANDIDATES = [4, 8, 16]
NUM_DENSE = 3


def _scorer():
    """A scorer from random supernet weights and random slices, the same on every rank (seeded)."""
    from torchrec_aes.models.blocks import BlockNet, BlockSpace
    from torchrec_aes.models.ctr import TableSpec
    from torchrec_aes.search.nasrec.supernet import SubnetScorer

    space = BlockSpace(
        num_blocks=3, space="full", widths=(8, 16, 32), tokens=(4, 8), token_dim=8, merger_tokens=2, heads=2
    )
    configs = [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=max(CANDIDATES), num_embeddings=10, feature_names=[f])
        for f in FEATURES
    ]
    torch.manual_seed(0)
    net = BlockNet(TableSpec(configs), NUM_DENSE, space, None)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)

    def part(n: int):
        pooled = {f: torch.randn(n, max(CANDIDATES), generator=g) for f in FEATURES}
        dense = torch.randn(n, NUM_DENSE, generator=g)
        labels = torch.bernoulli(torch.sigmoid(dense[:, 0] + pooled["c1"][:, 0]), generator=g)
        return pooled, dense, labels

    scorer = SubnetScorer(
        space, NUM_DENSE, configs, net.state_dict(), part(300), part(200), 30, 0.04, 64, seed=0
    )
    return scorer, space


def _evolve(scorer, space, score_many):
    from torchrec_aes.search.nasrec.evolution import evolve
    from torchrec_aes.search.nasrec.space import Candidate, mutate, random_candidate

    def fits(c: Candidate) -> bool:
        return sum(c.dims) <= 40  # a budget that rejects some candidates

    def new(rng: random.Random) -> Candidate:
        return random_candidate(rng, space, len(FEATURES), CANDIDATES, None)

    def child(rng: random.Random, parent: Candidate, m: int) -> Candidate:
        return mutate(rng, parent, space, CANDIDATES, m, True)

    calls: list[int] = []

    def counted(cands):
        calls.append(len(cands))
        return score_many(cands)

    result = evolve(counted, new, child, fits, random.Random(7), 7, 3, 3, 4, 3)
    return {
        "scored": [(c.key(), s) for c, s in result.scored],
        "best_per_generation": result.best_per_generation,
        "top": [(c.key(), s) for c, s in result.top(2)],
        "calls": calls,
    }


def _evolve_on_ranks(rank: int, world_size: int) -> dict:
    torch.set_num_threads(1)
    from torchrec_aes.search.nasrec.supernet import score_on_ranks

    scorer, space = _scorer()
    split = _evolve(scorer, space, lambda cands: [s["score"] for s in score_on_ranks(scorer, cands)])
    out = {"split": split, "evaluations": scorer.evaluations, "cached": len(scorer.cache)}
    if rank == 0:  # the same evolution scored by one process, with a fresh scorer on the same weights
        serial_scorer, space = _scorer()
        out["serial"] = _evolve(
            serial_scorer, space, lambda cands: [serial_scorer.score(c)["score"] for c in cands]
        )
        out["serial_evaluations"] = serial_scorer.evaluations
    return out


def test_evolution_scored_over_two_ranks_is_the_serial_evolution():
    r0, r1 = run_ranks(_evolve_on_ranks, world_size=2)
    split, serial = r0["split"], r0["serial"]
    assert split == r1["split"]  # both ranks ran the same evolution
    assert [k for k, _ in split["scored"]] == [k for k, _ in serial["scored"]]
    assert [s for _, s in split["scored"]] == [s for _, s in serial["scored"]]  # exactly
    assert split["best_per_generation"] == serial["best_per_generation"] and split["top"] == serial["top"]
    assert split["calls"] == serial["calls"] and len(split["calls"]) == 5  # population + 4 generations
    n = len(serial["scored"])
    assert n == r0["serial_evaluations"] > 7 and len({k for k, _ in serial["scored"]}) == n
    # Each rank scored its share (split by estimated cost), nothing twice; every rank ends with every score.
    assert r0["evaluations"] + r1["evaluations"] == n
    assert r0["evaluations"] > 0 and r1["evaluations"] > 0
    assert r0["cached"] == r1["cached"] == n
