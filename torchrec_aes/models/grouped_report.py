"""The report section of a grouped (iHAS) architecture: a groups x fields heatmap of dims and each group's
share, router and test AUC. `GroupedKind.report` calls it."""

from __future__ import annotations

from typing import Any

import numpy as np

from torchrec_aes.architecture import Architecture
from torchrec_aes.io import exists, join, load_numpy
from torchrec_aes.planning.memory import format_bytes
from torchrec_aes.report import binary_auc, plt, save_png


def grouped_section(run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
    """iHAS: a groups x fields heatmap of dims (`groups.png`) and each group's share, router share and
    test AUC (from the winner's test scores and `test_groups.npy`, when the grouped model won)."""
    spec = arch.extra.get("groups", {})
    dims = np.array(spec.get("dims", []))
    if dims.size == 0:
        return []
    log: dict[str, Any] = next(  # the search log of this K among iHAS's candidates
        (
            c
            for c in metrics.get("search_log", {}).get("candidates", [])
            if c.get("num_groups") == dims.shape[0]
        ),
        {},
    )
    # The first F tables are one per field in schema order (shared `t_<f>`, or group 0's `g0_t_<f>`).
    features = [t.feature_names[0] for t in arch.tables[: dims.shape[1]]]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * dims.shape[1] + 2), 0.5 * dims.shape[0] + 1.5))
    im = ax.imshow(dims, cmap="Blues", aspect="auto")
    for (k, f), d in np.ndenumerate(dims):
        ax.text(f, k, str(d), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(dims.shape[1]), features, rotation=70, fontsize=7)
    ax.set_yticks(range(dims.shape[0]), [f"group {k}" for k in range(dims.shape[0])])
    ax.set_title(f"embedding dim per group and field ({spec.get('deployment')} tables)")
    fig.colorbar(im, ax=ax)
    save_png(fig, join(run_dir, "groups.png"))
    router = log.get("router", {})
    lines = [
        "",
        f"Groups: {dims.shape[0]}, deployment `{spec.get('deployment')}`; router reads "
        f"{', '.join(router.get('features', [])) or 'nothing (one group)'}: "
        f"{format_bytes(int(router.get('bytes', 0)))} ({router.get('share_of_budget', 0.0):.1%} of the "
        f"budget), agrees with the nearest centroid on {router.get('accuracy', float('nan')):.1%} of "
        "held-out rows.",
        "",
        "![dims per group and field](groups.png)",
        "",
    ]
    name = f"ihas_k{dims.shape[0]}"  # the finalist's name (`search/ihas/search.py`)
    scores_path, groups_path = metrics.get("test_scores"), join(run_dir, "test_groups.npy")
    if scores_path and not scores_path.startswith("/") and "://" not in scores_path:
        scores_path = join(run_dir, scores_path)
    per_group: dict[int, tuple[int, float]] = {}
    if scores_path and exists(scores_path) and exists(groups_path) and metrics.get("winner", name) == name:
        scores, groups = load_numpy(scores_path), load_numpy(groups_path)
        if scores.shape[1] == len(groups):
            for k in range(dims.shape[0]):
                mask = groups == k
                per_group[k] = (int(mask.sum()), binary_auc(scores[0][mask], scores[1][mask]))
    lines += ["| group | train share | dims (sum) | test rows | test auc |", "|---|---|---|---|---|"]
    for k in range(dims.shape[0]):
        share = log.get("groups", [{}] * dims.shape[0])[k].get("share", float("nan"))
        rows, auc = per_group.get(k, (0, float("nan")))
        lines.append(f"| {k} | {share:.1%} | {int(dims[k].sum())} | {rows} | {auc:.4f} |")
    return lines
