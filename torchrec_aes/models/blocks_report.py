"""Report pictures of block graphs (NASRec): `plot_blocks` draws one graph; `BlocksKind.report` shows the
chosen architecture's, and NASRec's own report section (`search/nasrec/report.py`) the evolution and, when
a baseline won, the search's best graph."""

from __future__ import annotations

from typing import Any

from torchrec_aes.io import join
from torchrec_aes.report import plt, save_png


def plot_blocks(blocks: list[dict[str, Any]], title: str, path: str) -> None:
    """A block graph (NASRec): node 0 (the input) and each block as a box with its ops and sizes; dense
    inputs as blue arcs above, sparse inputs as orange dashed arcs below."""
    n = len(blocks) + 1
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * n), 4.2))
    for j in range(n):
        if j == 0:
            text = "0: input\ndense + tokens"
        else:
            b = blocks[j - 1]
            extras = " ".join(x for x, on in (("+merge", b["merge"]), ("+fm", b["fm"])) if on)
            text = f"{j}: {b['dense_op']} {b['width']}\n{b['sparse_op']} {b['tokens']}t\n{extras}".rstrip()
        ax.text(j, 0, text, ha="center", va="center", fontsize=8, bbox={"boxstyle": "round", "fc": "0.93"})
    for j, b in enumerate(blocks, start=1):
        for side, color, style, sign in (
            ("dense_in", "tab:blue", "-", 1),
            ("sparse_in", "tab:orange", "--", -1),
        ):
            for i in b[side]:
                ax.annotate(
                    "",
                    xy=(j - 0.3, 0.12 * sign),
                    xytext=(i + 0.3, 0.12 * sign),
                    arrowprops={
                        "arrowstyle": "->",
                        "color": color,
                        "linestyle": style,
                        "connectionstyle": f"arc3,rad={-0.35 * sign if j - i > 1 else 0}",
                    },
                )
    ax.plot([], [], color="tab:blue", label="dense input")
    ax.plot([], [], color="tab:orange", linestyle="--", label="sparse input")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(-1.2, 1.2)
    ax.axis("off")
    ax.set_title(title)
    save_png(fig, path)


def graph_section(run_dir: str, graph: dict[str, Any] | list[dict[str, Any]], which: str) -> list[str]:
    """`blocks.png` of a graph (`BlockGraph.to_dict()`, or a bare list of blocks) ("the chosen
    architecture", ...) and the report lines showing it."""
    blocks = graph["blocks"] if isinstance(graph, dict) else graph
    final = "dense + sparse" if not isinstance(graph, dict) or graph["final_sparse"] else "dense only"
    plot_blocks(
        blocks,
        f"block graph: {which} (final layer reads block {len(blocks)}'s {final})",
        join(run_dir, "blocks.png"),
    )
    return ["", f"Block graph of {which}:", "", "![block graph](blocks.png)", ""]
