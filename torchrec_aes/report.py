"""`report.md` and its plots: per-table dims (with planted ranks when known) and bytes against the budget."""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from torchrec_aes.architecture import Architecture, kind_of  # noqa: E402
from torchrec_aes.io import join, write_bytes_atomic, write_text_atomic  # noqa: E402
from torchrec_aes.planning.memory import Budget, format_bytes  # noqa: E402


def save_png(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def plot_dims(
    arch: Architecture, metrics: dict[str, Any], budget: Budget | None, planted: list[int] | None, path: str
) -> None:
    """Two panels: dims per table (planted ranks as markers), cumulative bytes with the budget line."""
    names = [t.name for t in arch.tables]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(names) + 6), 4))
    x = range(len(names))
    ax1.bar(x, arch.dims, color="tab:blue", label="embedding_dim")
    if planted is not None and len(planted) == len(names):
        ax1.scatter(x, planted, color="tab:red", marker="_", s=200, zorder=3, label="planted rank")
    ax1.set_xticks(list(x), names, rotation=70, fontsize=7)
    ax1.set_ylabel("dim")
    ax1.set_title(f"per-table dims ({arch.method})")
    ax1.legend(fontsize=8)
    per_table = metrics.get("table_bytes", {})
    mib = [per_table.get(n, 0) / 2**20 for n in names]
    total = sum(mib)
    bottom = 0.0
    for name, size in zip(names, mib, strict=True):
        ax2.bar([0], [size], bottom=bottom, width=0.5)
        if total and size > 0.05 * total:  # label the tables that matter for the budget
            ax2.text(0, bottom + size / 2, name, ha="center", va="center", fontsize=7)
        bottom += size
    if budget is not None:
        ax2.axhline(
            budget.bytes / 2**20, color="black", linestyle="--", label=f"budget {format_bytes(budget.bytes)}"
        )
        ax2.legend(fontsize=8, loc="lower right")
    ax2.set_xticks([0], ["tables (stacked)"])
    ax2.set_ylabel("MiB (TorchRec storage estimate)")
    ax2.set_title(f"total {format_bytes(int(total * 2**20))}")
    save_png(fig, path)


def plot_landscape(landscape: dict[str, Any], budget: Budget | None, path: str) -> None:
    """Quality vs bytes of the architectures a search scored (grey), its named points (the uniform
    baselines as a line, the search's picks as markers) and the budget line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = landscape.get("points", [])
    if points:
        ax.scatter([p[0] / 2**20 for p in points], [p[1] for p in points], s=6, color="0.7", label="scored")
    named = landscape.get("named", {})
    uniform = sorted((v for k, v in named.items() if k.startswith("uniform-")), key=lambda v: v[0])
    if uniform:
        ax.plot([v[0] / 2**20 for v in uniform], [v[1] for v in uniform], "o-", color="tab:blue")
        for label, v in named.items():
            if label.startswith("uniform-"):
                ax.annotate(
                    label, (v[0] / 2**20, v[1]), fontsize=7, xytext=(3, -9), textcoords="offset points"
                )
    markers = {"policy argmax": ("tab:orange", "s"), "final": ("tab:red", "*")}
    for label, v in named.items():
        if not label.startswith("uniform-"):
            color, marker = markers.get(label, ("tab:green", "D"))
            ax.scatter([v[0] / 2**20], [v[1]], color=color, marker=marker, s=90, zorder=3, label=label)
    if budget is not None:
        ax.axvline(
            budget.bytes / 2**20, color="black", linestyle="--", label=f"budget {format_bytes(budget.bytes)}"
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"MiB: {landscape.get('x', 'bytes')}")
    ax.set_ylabel(landscape.get("y", "quality"))
    ax.legend(fontsize=8)
    save_png(fig, path)


def _finalists_table(metrics: dict[str, Any]) -> list[str]:
    """The final pick: every finalist (the search's and the zero-cost baselines) trained from scratch,
    with its bytes, validation and test numbers; says plainly when a baseline won."""
    rows = metrics.get("finalists")
    if not rows:
        return []
    keys = sorted(k for k in rows[0]["val"] if k != "users")[:4]
    lines = [
        "",
        "Final pick: finalists trained from scratch (successive halving over epochs), the best on validation "
        "kept:",
        "",
        "| finalist | bytes | dense params | epochs | seconds | "
        + " | ".join(f"val {k}" for k in keys)
        + " | "
        + " | ".join(f"test {k}" for k in keys)
        + " | chosen |",
        "|---|---|---|---|---|" + "---|" * (2 * len(keys)) + "---|",
    ]
    for r in rows:
        val = " | ".join(f"{r['val'].get(k, float('nan')):.4f}" for k in keys)
        test = " | ".join(f"{r['test'].get(k, float('nan')):.4f}" for k in keys)
        secs = "cached" if r.get("cached") else f"{r.get('seconds', float('nan')):.1f}"
        lines.append(
            f"| {r['label']} | {format_bytes(r['bytes'])} | {r.get('dense_params') or ''} | {r['epochs']} | "
            f"{secs} | {val} | {test} | "
            f"{'**yes**' if r['chosen'] else ''} |"
        )
    winner = next(r for r in rows if r["chosen"])
    if winner["baseline"]:
        lines += [
            "",
            f"**A zero-cost baseline won: {winner['label']}.** The search's own finalists were worse on "
            "validation; the run directory holds the baseline's architecture.",
        ]
    return lines


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank AUC (ties averaged); nan without both classes."""
    pos = labels > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of ties.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_pos = int(pos.sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(scores) - n_pos)))


def write_report(
    run_dir: str,
    arch: Architecture,
    metrics: dict[str, Any],
    budget: Budget | None = None,
    planted: list[int] | None = None,
    landscape: dict[str, Any] | None = None,
    sections: list[str] | None = None,
) -> None:
    """Writes `report.md`, `dims.png` and, with a search's `landscape` (scored architectures: "points"
    [[bytes, quality]], "named" {label: [bytes, quality]}, axis labels "x"/"y"), `quality_vs_bytes.png`.
    The architecture's kind adds its own section (`ArchKind.report`), the search method its `sections`
    (markdown lines; `search.base.register(report=...)`)."""
    if planted is not None and len(planted) != len(arch.tables):
        planted = None  # per field, not per table (a grouped architecture has more tables)
    plot_dims(arch, metrics, budget, planted, join(run_dir, "dims.png"))
    if landscape:
        plot_landscape(landscape, budget, join(run_dir, "quality_vs_bytes.png"))
    lines = [f"# Run report: {arch.method}", ""]
    test, val = metrics.get("test", {}), metrics.get("val", {})
    if test:
        lines += ["| split | " + " | ".join(sorted(test)) + " |", "|---|" + "---|" * len(test)]
        for name, values in (("val", val), ("test", test)):
            lines.append(
                f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.4f}" for k in sorted(test)) + " |"
            )
        lines.append("")
    used = metrics.get("embedding_bytes")
    if used is not None:
        lines.append(f"- embedding bytes for training (TorchRec estimate): {used} ({format_bytes(used)})")
    if "serving_bytes" in metrics:
        served = metrics["serving_bytes"]
        lines.append(
            f"- embedding bytes for serving (TorchRec inference estimate): {served} ({format_bytes(served)})"
        )
    if budget is not None:
        spent = metrics.get("budget_used", used or 0)
        lines.append(
            f"- budget ({budget.count}): {budget.bytes} ({format_bytes(budget.bytes)}), "
            f"from '{budget.text}'; slack {budget.bytes - spent}"
        )
        lines.append(f"- bytes used / budget: {metrics.get('budget_share_used', 0.0):.1%}")
    for key in ("search_seconds", "final_seconds", "retrain_seconds", "wall_seconds"):
        if key in metrics:
            lines.append(f"- {key.replace('_', ' ')}: {metrics[key]:.1f}")
    if "cost_ratio" in metrics:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in metrics.get("phase_seconds", {}).items())
        lines.append(
            f"- search cost: {metrics['cost_ratio']:.2f}x one training of the returned architecture "
            f"({metrics['training_seconds']:.1f} s); phases: {phases}"
        )
    lines += _finalists_table(metrics)
    # What only an architecture kind or a search method knows (iHAS's groups, NASRec's block graphs).
    lines += kind_of(arch).report(run_dir, arch, metrics)
    lines += sections or []
    lines += [
        "",
        "![per-table dims and bytes](dims.png)",
        "",
    ]
    if landscape:
        lines += [
            "Quality vs bytes of every architecture the search scored, with the uniform baselines "
            "(all tables at one candidate) and the search's picks:",
            "",
            "![quality vs bytes](quality_vs_bytes.png)",
            "",
        ]
    lines += [
        "| table | rows | dim | bytes |" + (" planted rank |" if planted else ""),
        "|---|---|---|---|" + ("---|" if planted else ""),
    ]
    per_table = metrics.get("table_bytes", {})
    for i, t in enumerate(arch.tables):
        row = f"| {t.name} | {t.num_embeddings} | {t.embedding_dim} | {per_table.get(t.name, '')} |"
        if planted:
            row += f" {planted[i]} |"
        lines.append(row)
    write_text_atomic(join(run_dir, "report.md"), "\n".join(lines) + "\n")


def write_frontier(run_dir: str, method: str, summary: dict[str, Any], frontier: dict[str, Any]) -> None:
    """`frontier.png` and `report.md` of a budget list: test quality vs bytes of each budget's pick, with
    the other finalists of its final pick (the zero-cost baselines at the same budget among them)."""
    metric = frontier["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for point in frontier["points"]:
        for p in point["picks"]:
            if p["test"] is None:
                continue
            color = colors.setdefault(p["label"], cycle[len(colors) % len(cycle)])
            ax.scatter(
                [p["bytes"] / 2**20],
                [p["test"]],
                s=80 if p["chosen"] else 30,
                facecolors=color if p["chosen"] else "none",
                edgecolors=color,
                label=p["label"] if p["label"] not in ax.get_legend_handles_labels()[1] else None,
            )
        ax.axvline(point["budget_bytes"] / 2**20, color="grey", linestyle=":", linewidth=0.8)
    sizes = [point["budget_bytes"] for point in frontier["points"]]
    wide = bool(sizes) and max(sizes) >= 8 * max(min(sizes), 1)
    if wide:  # budgets from 1/2 to 1/64 of a model: equal steps on a log axis
        ax.set_xscale("log")
    scale = ", log scale" if wide else ""
    ax.set_xlabel(f"embedding bytes (MiB, TorchRec estimate{scale}); dotted: budgets")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(
        f"{method}: filled = chosen on validation; hollow = other finalists (may have trained fewer epochs)"
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    save_png(fig, join(run_dir, "frontier.png"))
    lines = [f"# Budget list: {method}", "", f"![test {metric} vs bytes](frontier.png)", ""]
    lines += [
        f"| budget | bytes used / budget | winner | test {metric} | finalists (test {metric}, epochs) "
        "| run |",
        "|---|---|---|---|---|---|",
    ]
    for b in summary["budgets"]:
        used = b["budget_used"] / max(b["budget_bytes"], 1)
        test = (b.get("test") or {}).get(metric, float("nan"))
        others = ", ".join(
            f"{r['label']} {r['test'].get(metric, float('nan')):.4f} ({r['epochs']})"
            for r in b.get("finalists") or []
        )
        lines.append(
            f"| {b['budget']} | {used:.1%} | {b.get('winner', method)} | {test:.4f} | {others} "
            f"| {b['run_dir']} |"
        )
    seconds = [b["seconds"] for b in summary["budgets"]]
    lines += [
        "",
        f"- seconds per budget: {', '.join(f'{s:.0f}' for s in seconds)} (the first includes what is shared)",
    ]
    write_text_atomic(join(run_dir, "report.md"), "\n".join(lines) + "\n")
