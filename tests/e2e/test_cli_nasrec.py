"""NASRec through the CLI as a user runs it: `torchrec-aes search` writes the run directory (a `blocks`
architecture, the evolution's log, the scores file, the report), the result feeds `torchrec-aes train
arch=RUN` (which retrains the final pick's model to the same test AUC) and `torchrec-aes plan RUN`, a rerun
in the same directory resumes instead of searching again, and a budget nothing fits is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli
from torchrec_aes.architecture import Architecture, kind_of
from torchrec_aes.cli import main as cli_main
from torchrec_aes.models.block_graph import BlockGraph, BlockSpace, live_key
from torchrec_aes.search.nasrec.search import SCORES_FILE, save_scores

pytestmark = pytest.mark.e2e
NASREC_TINY = str(REPO / "configs" / "tests" / "nasrec_tiny.yaml")
TINY = yaml.safe_load(Path(NASREC_TINY).read_text())["search"]["nasrec"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the run directory of one tiny NASRec search, the tmp dir holding it and the data cache)."""
    tmp = tmp_path_factory.mktemp("nasrec")
    run = tmp / "search"
    out = cli(tmp, "search", NASREC_TINY, "--run-dir", str(run)).stdout
    assert "<= budget" in out
    return run, tmp


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_search_writes_the_blocks_run_directory(search_run):
    run, _ = search_run
    metrics = _metrics(run)
    assert metrics["method"] == "nasrec" and metrics["world_size"] == 1
    assert 0 < metrics["budget_used"] <= metrics["budget_bytes"]
    labels = [f["label"] for f in metrics["finalists"]]
    assert labels[:2] == ["nasrec", "nasrec_2"] and "uniform" in labels  # top_k = 2, then the baselines
    assert metrics["winner"] in labels
    chosen = next(f for f in metrics["finalists"] if f["label"] == metrics["winner"])
    assert chosen["test"] == metrics["test"]  # the search reports the chosen finalist's test metrics
    assert chosen["val"]["auc"] == max(f["val"]["auc"] for f in metrics["finalists"])

    log = metrics["search_log"]
    assert log["world_size"] == 1 and log["search_dims"] is True and log["resumed_scores"] == 0
    bpg = log["best_per_generation"]
    assert len(bpg) == TINY["generations"] + 1
    assert all(a <= b for a, b in zip(bpg, bpg[1:], strict=False))
    population, children = TINY["population"], TINY["children"]
    assert population < log["scored"] <= population + children * TINY["generations"]
    assert log["scored_here"] == log["scored"]  # one process scored everything
    assert len(log["top"]) == TINY["top_k"] and log["top"][0]["score"] == bpg[-1]
    assert log["top"][0]["score"] >= log["top"][1]["score"]
    for top in log["top"]:
        assert top["score"] == pytest.approx(-top["logloss"]) and top["bytes"] <= metrics["budget_bytes"]
        assert set(top["dims"]) <= set(metrics["candidates"])
        assert top["dense_params"] > 0
    space = BlockSpace.from_dict(log["space"])
    assert space.num_blocks == TINY["num_blocks"] and list(space.widths) == TINY["widths"]
    # DLRM and DCN as block graphs started the first population and were scored.
    assert [s["name"] for s in log["seeded"]] == ["dlrm", "dcn"]
    assert all(s["score"] <= bpg[0] for s in log["seeded"])
    assert all(f["dense_params"] > 0 for f in metrics["finalists"])

    scores = json.loads((run / SCORES_FILE).read_text())
    assert len(scores["scores"]) == log["scored"] and scores["identity"]["supernet"] == log["supernet"]["tag"]
    assert {t["key"] for t in log["top"]} <= set(scores["scores"])

    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    if metrics["winner"].startswith("nasrec"):
        assert arch["kind"] == "blocks" and arch["method"] == "nasrec"
        assert set(arch["extra"]) == {"space", "blocks"} and arch["extra"]["space"] == log["space"]
        graph = BlockGraph.from_dict(arch["extra"]["blocks"], space)
        top = log["top"][0 if metrics["winner"] == "nasrec" else 1]
        dims = [t["embedding_dim"] for t in arch["tables"]]
        assert dims == top["dims"] and f"{live_key(graph)}-{'.'.join(map(str, dims))}" == top["key"]
    else:  # a baseline won the final pick: its architecture is a plain tables one
        assert arch["kind"] == "tables"

    report = (run / "report.md").read_text()
    assert "Final pick" in report and "nasrec" in report and "dense params" in report
    assert "Supernet scores of the hand-built models as block graphs: DLRM" in report
    for png in ("blocks.png", "evolution.png"):
        assert png in report and (run / png).stat().st_size > 1000


def test_the_saved_blocks_architecture_loads_back_as_a_blocknet(search_run):
    run, _ = search_run
    if not _metrics(run)["winner"].startswith("nasrec"):
        pytest.skip("a baseline won the final pick: no blocks architecture to load")
    arch = Architecture.load(str(run / "architecture.yaml"))
    assert arch.kind == "blocks" and kind_of(arch).name == "blocks"
    assert arch.embedding_bytes is not None and arch.embedding_bytes <= arch.budget_bytes
    graph, space = kind_of(arch).graph(arch, str(run / "architecture.yaml"))
    assert len(graph.blocks) == space.num_blocks == TINY["num_blocks"]


def test_train_with_the_searched_arch_reproduces_the_final_pick_and_plan_writes_a_plan(search_run, capsys):
    # `train` and `plan` run through the CLI's own entry point in this process (as the iHAS e2e test does):
    # the same parsing and code, without two more interpreter start-ups.
    run, tmp = search_run
    metrics = _metrics(run)
    retrain = tmp / "retrain"
    cli_main(
        ["train", NASREC_TINY, "--run-dir", str(retrain), f"arch={run}", f"data.cache_dir={tmp / 'cache'}"]
    )
    assert "test auc=" in capsys.readouterr().out
    retrained = _metrics(retrain)
    assert 0.0 <= retrained["test"]["auc"] <= 1.0
    searched = yaml.safe_load((run / "architecture.yaml").read_text())
    again = yaml.safe_load((retrain / "architecture.yaml").read_text())
    assert again["kind"] == searched["kind"] and again["tables"] == searched["tables"]
    assert again.get("extra") == searched.get("extra")
    if metrics["winner"].startswith("nasrec"):
        # The final pick trained the same BlockNet (same config, seed and epochs) from scratch.
        assert retrained["test"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
        assert retrained["test"]["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-6)

    plan_file = run / "p.json"
    cli_main(["plan", str(run), "--world-size", "4", "--out", str(plan_file)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().split("|")[0].strip().isdigit()]
    assert len(lines) == 4  # one line per rank
    placed = " ".join(line.split("|")[-1] for line in lines)
    for t in searched["tables"]:
        assert t["name"] in placed
    from torchrec_aes.planning.plan_io import load_plan

    plan = load_plan(str(plan_file))
    assert str(plan_file) in out
    assert sorted(plan.plan["model.sparse_arch"]) == sorted(t["name"] for t in searched["tables"])


def test_a_rerun_in_the_same_run_directory_resumes(search_run, tmp_path):
    run, tmp = search_run
    copy = tmp_path / "search"
    shutil.copytree(run, copy)  # the other tests keep the original
    first = _metrics(copy)
    proc = cli(tmp, "search", NASREC_TINY, "--run-dir", str(copy))
    text = proc.stdout + proc.stderr
    again = _metrics(copy)
    # The supernet is not trained again, nothing is scored again, the finalists are not retrained.
    tag = first["search_log"]["supernet"]["tag"]
    assert tag.startswith("nasrec/supernet_") and f"resumed {tag} after epoch 0" in text
    assert f"{tag} epoch 0:" not in text
    log = again["search_log"]
    assert log["resumed_scores"] == log["scored"] == first["search_log"]["scored"] and log["scored_here"] == 0
    assert f"resumed finalists/{first['winner']} after epoch 0" in text
    # ... and the search is the same.
    assert log["best_per_generation"] == first["search_log"]["best_per_generation"]
    assert log["top"] == first["search_log"]["top"]
    assert (copy / "architecture.yaml").read_text() == (run / "architecture.yaml").read_text()
    assert again["test"] == first["test"] and again["winner"] == first["winner"]
    # Faster: the run's own clock (search + final pick; measured 7.9 s -> 2.0 s), not the process's, which
    # also counts the interpreter start-up and, the first time, generating the data.
    assert again["wall_seconds"] < 0.5 * first["wall_seconds"], (again["wall_seconds"], first["wall_seconds"])
    assert again["search_seconds"] < first["search_seconds"]
    assert log["evolution_seconds"] < first["search_log"]["evolution_seconds"]


def test_an_interrupted_evolution_scores_only_what_is_missing(search_run, tmp_path):
    # A kill during the evolution leaves the scores of the generations done: keep the first half of them.
    run, tmp = search_run
    copy = tmp_path / "search"
    shutil.copytree(run, copy)
    first = _metrics(copy)
    blob = json.loads((copy / SCORES_FILE).read_text())
    kept = dict(list(blob["scores"].items())[: len(blob["scores"]) // 2])
    save_scores(str(copy / SCORES_FILE), blob["identity"], kept)  # as the search writes it, checksum too
    shutil.rmtree(copy / "checkpoints" / "finalists")  # the final pick had not started either
    cli(tmp, "search", NASREC_TINY, "--run-dir", str(copy))
    log = _metrics(copy)["search_log"]
    assert log["resumed_scores"] == len(kept) and log["scored_here"] == log["scored"] - len(kept) > 0
    assert log["best_per_generation"] == first["search_log"]["best_per_generation"]
    assert log["top"] == first["search_log"]["top"]
    assert (copy / "architecture.yaml").read_text() == (run / "architecture.yaml").read_text()
    assert len(json.loads((copy / SCORES_FILE).read_text())["scores"]) == log["scored"]


def test_a_budget_nothing_fits_is_a_one_line_error_naming_the_smallest_size(tmp_path):
    proc = cli(
        tmp_path, "search", NASREC_TINY, "--run-dir", str(tmp_path / "r"), "search.budget=100", check=False
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "smallest" in errors[0] and "every table at dim 4" in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "architecture.yaml").exists()


def test_count_dense_budgets_every_scored_candidates_dense_part_with_its_tables(tmp_path):
    run = tmp_path / "r"
    cli(
        tmp_path,
        "search",
        NASREC_TINY,
        "--run-dir",
        str(run),
        "search.nasrec.count_dense=true",
        "search.nasrec.generations=1",
        "search.final_baselines=false",
        "search.nasrec.top_k=1",
    )
    metrics = _metrics(run)
    log = metrics["search_log"]
    assert log["count_dense"] is True
    top = log["top"][0]
    # The dense part counts at 4 bytes per fp32 parameter, and it matters at this size.
    assert top["bytes"] + 4 * top["dense_params"] <= metrics["budget_bytes"]
    assert 4 * top["dense_params"] > 0.01 * metrics["budget_bytes"]
    # The trained model's own count is the candidate's (the meta-device count is the real model's).
    assert metrics["finalists"][0]["dense_params"] == top["dense_params"]
