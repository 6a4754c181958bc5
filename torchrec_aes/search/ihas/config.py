"""iHAS's config section, `search.ihas` (`search/ihas/__init__.py` says what the paper fixes and what these
defaults are)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torchrec_aes.architecture import check_data_type
from torchrec_aes.config import register_section
from torchrec_aes.models.grouped import DEPLOYMENTS


@dataclass
class IHASConfig:
    """iHAS (search.method=ihas): instance-wise gates, clustering into groups, one model per group."""

    search_epochs: int = 2
    """Epochs of the gated search model (each capped by `train.max_steps` if set)."""
    gates: str = "prefix"
    """How gates mask a field's embedding, in blocks of 4 dims: "prefix" (a sample keeps the first k blocks,
    k = the number of leading open gates: a group's dims map onto the first columns of a TorchRec table)
    or "free" (any subset of blocks, closer to the paper; the count of open blocks is the dim)."""
    controller_hidden: int = 64
    """Hidden units of the gate controller (embeddings of a sample -> gate logits per (field, block))."""
    gate_init: float = 2.0
    """Initial gate logit: sigmoid(2) = 0.88, so the search starts near the full model."""
    gate_logit_bound: float = 4.0
    """The gate logits are bounded to (-b, b) (b tanh(raw / b)): pi stays within [0.018, 0.982] for b = 4.
    A guard: what keeps the logits off their bounds is the controller's unit-norm input (`gates.py`);
    with raw inputs the logits saturated within ~100 steps, bounded or not, and froze the gates."""
    sparsity_lr: float = 0.005
    """Step of the dual update of lambda_s (the sparsity weight), per training step: lambda_s rises while
    the expected kept share is above the target, falls while below (see `dual`). 0.05 made the gates
    swing between all open and all closed every ~200 steps on the planted data; with 0.005 the share per
    epoch stayed within 0.04 of the target on two-population planted data, Frappe and criteo_sample, and
    fell to 0.32-0.39 against 0.45 in the second epoch on one-population planted data."""
    sparsity_weights: str = "uniform"
    """How the sparsity term weighs the fields: "uniform" (every gate costs the same: which gates close is
    decided by the signal, and the budget is met afterwards when the group dims are fitted to it) or
    "rows" (each field by its share of the table rows, i.e. by the bytes a kept dim costs: large tables
    close first, whatever their signal)."""
    dual: str = "signed"
    """The dual variable lambda_s: "signed" (the kept share is an equality target: lambda_s may go below 0
    and reopen gates after an overshoot) or "nonnegative" (an upper bound: lambda_s stops at 0, so gates
    that closed past the target stay closed)."""
    polarization_weight: float = 0.01
    """lambda_p: weight of mean(pi (1 - pi)), the bi-polarization regulariser (pushes gates to 0 or 1)."""
    num_groups: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Candidate K (groups of samples), one finalist each, chosen by the final pick on validation: K = 1
    is one model with per-table dims (no router), so data without instance-wise structure can choose it
    and lose nothing to grouping. One number: that K only."""
    cluster_rows: int = 32768
    """Training rows (in total over ranks) whose masked embeddings are clustered and count the router."""
    kmeans_iters: int = 200
    """Mini-batch K-Means iterations."""
    kmeans_batch: int = 1024
    """Mini-batch K-Means batch size."""
    deployment: str = "shared"
    """"shared": groups read prefixes of one table per field (bytes: per field the widest group);
    "separate": each group its own tables (the paper's; bytes: the sum over groups)."""
    router_share: float = 0.1
    """At most this share of the budget goes to the router's tables (the most informative fields first)."""
    router_data_type: str = "fp16"
    """Precision of the router's tables."""
    router_smoothing: float = 1.0
    """Pseudo-count of the router's per-id group frequencies (towards the group prior)."""
    router_rounds: int = 5
    """Rounds of hard EM on the router's model after K-Means: relabel the sample by the router, refit the
    router, until the labels stop changing (0 = the K-Means groups as they are). The group models train on
    the rows the router sends them, so the groups (and their dims) become what the router serves."""
    fill_budget: bool = True
    """Scale the groups' dims to fill the budget (keeping their proportions), not only shrink to it."""


def check_config(icfg: IHASConfig) -> None:
    """Raises ValueError naming the `search.ihas.*` key of an out-of-range value."""
    rules: dict[str, tuple[float, Callable[[float], bool], str]] = {
        "search_epochs": (icfg.search_epochs, lambda v: v >= 1, ">= 1"),
        "controller_hidden": (icfg.controller_hidden, lambda v: v >= 1, ">= 1"),
        "sparsity_lr": (icfg.sparsity_lr, lambda v: v >= 0, ">= 0"),
        "polarization_weight": (icfg.polarization_weight, lambda v: v >= 0, ">= 0"),
        "cluster_rows": (icfg.cluster_rows, lambda v: v >= 2, ">= 2"),
        "kmeans_iters": (icfg.kmeans_iters, lambda v: v >= 1, ">= 1"),
        "kmeans_batch": (icfg.kmeans_batch, lambda v: v >= 1, ">= 1"),
        "router_share": (icfg.router_share, lambda v: 0 < v < 1, "in (0, 1)"),
        "router_smoothing": (icfg.router_smoothing, lambda v: v > 0, "> 0"),
        "router_rounds": (icfg.router_rounds, lambda v: v >= 0, ">= 0"),
    }
    for key, (value, ok, allowed) in rules.items():
        if not ok(value):
            raise ValueError(f"search.ihas.{key}: {value} is out of range; allowed: {allowed}")
    if not abs(icfg.gate_init) < icfg.gate_logit_bound:
        raise ValueError(
            f"search.ihas.gate_init: {icfg.gate_init} must lie within (-gate_logit_bound, gate_logit_bound) "
            f"= (-{icfg.gate_logit_bound}, {icfg.gate_logit_bound})"
        )
    counts = group_counts(icfg)
    if not counts or any(not 1 <= c <= 64 for c in counts) or len(set(counts)) < len(counts):
        raise ValueError(
            f"search.ihas.num_groups: {icfg.num_groups} is out of range; allowed: distinct counts in [1, 64]"
        )
    choices = {"sparsity_weights": ("uniform", "rows"), "dual": ("signed", "nonnegative")}
    for name, options in choices.items():
        value = getattr(icfg, name)
        if value not in options:
            raise ValueError(f"search.ihas.{name}: '{value}' is not one of {', '.join(options)}")
    if icfg.gates not in ("prefix", "free"):
        raise ValueError(f"search.ihas.gates: '{icfg.gates}' is not one of prefix, free")
    if icfg.deployment not in DEPLOYMENTS:
        raise ValueError(
            f"search.ihas.deployment: '{icfg.deployment}' is not one of {', '.join(DEPLOYMENTS)}"
        )
    check_data_type(icfg.router_data_type, "search.ihas.router_data_type")


def group_counts(icfg: IHASConfig) -> list[int]:
    """The candidate K, ascending (`num_groups` may be one int when built in Python)."""
    counts = icfg.num_groups
    return sorted(counts) if isinstance(counts, list) else [int(counts)]


register_section("ihas", IHASConfig, check_config)
