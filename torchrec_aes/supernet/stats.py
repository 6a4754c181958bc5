"""Paired comparison of two scorers' AUCs on the same rows, with its standard error (DeLong et al., 1988).

A search that compares architectures on one validation slice must know the slice's noise: two subnets'
AUCs differ by 1e-3 on 8k rows by chance alone. DeLong's estimate is the variance of the *paired*
difference, so what both subnets get right or wrong on the same rows cancels, and it costs two sorts per
architecture (no resampling).

Example::

    gain, se = auc_difference(scores_a, scores_b, labels)   # AUC(b) - AUC(a) and its standard error
    significant = gain > z_for(0.95) * se
"""

from __future__ import annotations

from statistics import NormalDist

import torch


def midranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of x [N], ties sharing their average rank (float64)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def placements(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeLong's structural components: for each positive the share of negatives it outscores (ties count
    half), [P]; for each negative the share of positives that outscore it, [Q]. Both average to the AUC."""
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = midranks(scores)
    v10 = (ranks[pos] - midranks(scores[pos])) / max(n_neg, 1)
    v01 = 1 - (ranks[~pos] - midranks(scores[~pos])) / max(n_pos, 1)
    return v10, v01


def auc_difference(
    scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """AUC(b) - AUC(a) on the same rows and the standard error of that paired difference (DeLong).

    Args:
        scores_a: [N] scores of the first model.
        scores_b: [N] scores of the second model on the same rows.
        labels: [N] in {0, 1}.

    Returns:
        (difference, standard error); (0, 0) if a class is missing or has one row.
    """
    pos = labels > 0.5
    if int(pos.sum()) < 2 or int((~pos).sum()) < 2:
        return 0.0, 0.0
    return placement_difference(placements(scores_a, labels), placements(scores_b, labels))


def placement_difference(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """`auc_difference` from two models' `placements` on the same rows (callers that compare one model
    with many others compute each model's placements once)."""
    d10, d01 = b[0] - a[0], b[1] - a[1]
    if d10.numel() < 2 or d01.numel() < 2:
        return 0.0, 0.0
    variance = float(d10.var() / d10.numel() + d01.var() / d01.numel())
    return float(d10.mean()), max(variance, 0.0) ** 0.5


def z_for(confidence: float) -> float:
    """The one-sided normal quantile of `confidence` (0.95 -> 1.645)."""
    return NormalDist().inv_cdf(confidence)
