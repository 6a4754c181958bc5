"""NASRec's section of a run's report: the evolution's best score per generation (`evolution.png`) and,
when a baseline won the final pick, the search's best block graph (when a block graph won, its kind's
section shows it)."""

from __future__ import annotations

from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.io import join
from torchrec_aes.models.blocks_report import graph_section
from torchrec_aes.report import plt, save_png


def nasrec_report(run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
    """Markdown lines (and the pictures they show, written into `run_dir`)."""
    log = metrics.get("search_log", {})
    lines: list[str] = []
    if arch.kind != "blocks" and log.get("best_blocks"):
        lines += graph_section(run_dir, log["best_blocks"], "the search's best (a baseline won)")
    best = log.get("best_per_generation")
    if best:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(-1, len(best) - 1), best, marker=".")
        ax.set_xlabel("generation (-1 = initial population)")
        ax.set_ylabel("best supernet score so far")
        ax.set_title(f"regularized evolution: {log.get('scored', '?')} scored")
        save_png(fig, join(run_dir, "evolution.png"))
        lines += [
            "",
            f"Evolution: {log.get('scored', '?')} architectures scored in "
            f"{log.get('evolution_seconds', float('nan')):.1f} s on {log.get('world_size', 1)} process(es); "
            f"supernet {log.get('supernet_seconds', float('nan')):.1f} s.",
            "",
            "![evolution](evolution.png)",
            "",
        ]
    seeded = log.get("seeded")
    if seeded and best:
        scores = ", ".join(f"{s['name'].upper()} {s['score']:.4f}" for s in seeded)
        lines += [
            f"Supernet scores of the hand-built models as block graphs: {scores}; the best found "
            f"{max(best):.4f}.",
            "",
        ]
    return lines
