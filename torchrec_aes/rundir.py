"""The run directory: every artifact path, and the writer of a finished run.

```
RUN/
  config.yaml          the fully resolved config (rerun with `torchrec-aes search RUN/config.yaml`)
  architecture.yaml    what was trained or found, and the side files its kind names beside it (BET's
                       row_dims.npy / row_remap.npy, iHAS's router.pt / centroids.pt / test_groups.npy)
  plan.json            sharding plan for the `plan.*` topology
  metrics.json         val/test metrics, bytes, budget, the search log, the final pick's finalists and
                       its cost (`phase_seconds`, `training_seconds`, `cost_ratio`)
  landscape.json       a search's scored architectures (quality vs bytes), if it has one
  report.md, *.png     the report and its plots (dims.png, quality_vs_bytes.png; the kind's and the
                       method's own sections: groups.png, blocks.png, evolution.png)
  tb/<tag>/            TensorBoard events of each training / search phase
  checkpoints/<tag>/   DCP checkpoints of each training / search phase (resume)
  scores/<tag>.npy     each training's test logits and labels, row by row ([2, N]; CTR)
  <method>/            a method's own state (e.g. bet/; AdaS&S's under checkpoints/adass/), each file with
                       a `<file>.json` manifest of the run's identity and checksum (`search/state.py`)
  baselines/<hash>/    trained zero-cost baselines by identity (`search.cache_dir`, default here):
                       checkpoints, tb, scores and the finished `result.json` (`search/finalists.py`)
  budget_<i>/          with a list of budgets: one complete run directory per budget, and in RUN/ the
                       summary metrics.json, frontier.json / frontier.png and report.md
```

This table is the one answer to "what does a run write": a kind or method that writes another file adds
its line here.

Every rank computes; rank 0 writes, through a temporary file and a rename (`io.write_*_atomic`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchrec_aes.architecture import ARCHITECTURE_FILE
from torchrec_aes.architecture import architecture_file as architecture_file  # re-exported
from torchrec_aes.config import Config, save_config
from torchrec_aes.io import join, makedirs, read_text, save_numpy_atomic, write_text_atomic
from torchrec_aes.planning.plan import plan_architecture
from torchrec_aes.planning.plan_io import save_plan
from torchrec_aes.report import write_frontier, write_report

if TYPE_CHECKING:
    from torchrec_aes.architecture import Architecture
    from torchrec_aes.planning.memory import Budget

CONFIG = "config.yaml"
ARCHITECTURE = ARCHITECTURE_FILE
PLAN = "plan.json"
METRICS = "metrics.json"
LANDSCAPE = "landscape.json"
FRONTIER = "frontier.json"
REPORT = "report.md"


def path(run_dir: str, name: str) -> str:
    """`RUN/<name>` for one of the file names above."""
    return join(run_dir, name)


def tb_dir(run_dir: str, tag: str) -> str:
    """TensorBoard events of one phase: `RUN/tb/<tag>`."""
    return join(run_dir, "tb", tag)


def checkpoint_dir(run_dir: str, tag: str) -> str:
    """Checkpoints of one phase: `RUN/checkpoints/<tag>`."""
    return join(run_dir, "checkpoints", tag)


def write_scores(run_dir: str, tag: str, scores: Any) -> str:
    """Saves a training's per-row test scores as `RUN/scores/<tag>.npy`; returns that path relative to RUN
    (what metrics.json records, so benchmarks can compare models on the same rows)."""

    relative = f"scores/{tag}.npy"
    save_numpy_atomic(join(run_dir, relative), scores)
    return relative


def budget_dir(run_dir: str, index: int) -> str:
    """The sub-run of the `index`-th budget of a budget list: `RUN/budget_<index>`."""
    return join(run_dir, f"budget_{index}")


def method_dir(run_dir: str, method: str) -> str:
    """A search method's own state: `RUN/<method>`."""
    return join(run_dir, method)


def write_plan(
    cfg: Config,
    world_size: int,
    arch: Architecture,
    module_path: str,
    run_dir: str,
    collection_paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Plans `arch` for the topology of `cfg.plan` (`plan.world_size` or `world_size`) into `plan.json`
    (the EBC at `module_path`, a collection's EC at `collection_paths`); returns the topology."""

    world_size = cfg.plan.world_size or world_size
    plan = plan_architecture(
        arch,
        world_size,
        cfg.plan.device,
        cfg.plan.hbm_gb,
        cfg.plan.ddr_gb,
        cfg.train.batch_size,
        cfg.train.embedding_optimizer,
        module_path=module_path,
        collection_paths=collection_paths,
    )
    topology = {
        "world_size": world_size,
        "device": cfg.plan.device,
        "hbm_gb": cfg.plan.hbm_gb,
        "ddr_gb": cfg.plan.ddr_gb,
        "batch_size": cfg.train.batch_size,
        "module_path": module_path,
    }
    save_plan(plan, path(run_dir, PLAN), metadata={"topology": topology})
    return topology


def write_run(
    cfg: Config,
    arch: Architecture,
    metrics: dict[str, Any],
    *,
    world_size: int,
    module_path: str,
    collection_paths: dict[str, str] | None = None,
    budget: Budget | None = None,
    planted: list[int] | None = None,
    landscape: dict[str, Any] | None = None,
    report: Callable[[str, Architecture, dict[str, Any]], list[str]] | None = None,
) -> None:
    """Writes config, architecture, plan, metrics, the landscape (if any) and the report into
    `cfg.run_dir`, with the search method's own `report` section (if any). Call on rank 0 only."""

    run_dir = cfg.run_dir
    makedirs(run_dir)
    save_config(cfg, path(run_dir, CONFIG))
    arch.save(path(run_dir, ARCHITECTURE))
    if cfg.plan.file:  # the run was sharded with a given plan: keep that one
        write_text_atomic(path(run_dir, PLAN), read_text(cfg.plan.file))
        metrics["plan_topology"] = {"file": cfg.plan.file, "world_size": world_size}
    else:
        metrics["plan_topology"] = write_plan(cfg, world_size, arch, module_path, run_dir, collection_paths)
    write_text_atomic(path(run_dir, METRICS), json.dumps(metrics, indent=1, sort_keys=True))
    if landscape:
        write_text_atomic(path(run_dir, LANDSCAPE), json.dumps(landscape))
    sections = report(run_dir, arch, metrics) if report is not None else None
    write_report(run_dir, arch, metrics, budget, planted, landscape, sections)


def write_budgets(cfg: Config, summary: dict[str, Any], metric: str) -> None:
    """The parent of a budget list: config, summary metrics, the frontier (JSON + plot) and a report.
    Call on rank 0 only."""

    run_dir = cfg.run_dir
    makedirs(run_dir)
    save_config(cfg, path(run_dir, CONFIG))
    write_text_atomic(path(run_dir, METRICS), json.dumps(summary, indent=1, sort_keys=True))
    points: list[dict[str, Any]] = []
    frontier = {"metric": metric, "points": points}
    for b in summary["budgets"]:
        points.append(
            {
                "budget": b["budget"],
                "budget_bytes": b["budget_bytes"],
                "picks": [
                    {
                        "label": r["label"],
                        "bytes": r["bytes"],
                        "test": r["test"].get(metric),
                        "epochs": r["epochs"],
                        "chosen": r["chosen"],
                    }
                    for r in b.get("finalists") or []
                ]
                or [
                    {
                        "label": cfg.search.method,
                        "bytes": b["budget_used"],
                        "test": (b.get("test") or {}).get(metric),
                        "chosen": True,
                    }
                ],
            }
        )
    write_text_atomic(path(run_dir, FRONTIER), json.dumps(frontier, indent=1))
    write_frontier(run_dir, cfg.search.method, summary, frontier)
