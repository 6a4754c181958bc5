"""Fitting iHAS's router: per-id group frequencies counted on the clustered sample (naive Bayes).

For a field f, S_f[id, k] = log P(k | id) - log p_k with P(k | id) = (c_{id,k} + a p_k) / (n_id + a):
an id seen often votes for its groups, a rare or unseen id scores ~0 (the prior). The router sums the
votes of its fields (`models/grouped.Router`).

Which fields: each field's held-out gain -- the mean log-likelihood of the true group over the prior on
half of the sample, with counts from the other half (a field of unique ids gains nothing, however well it
"fits" its own half) -- ranks the fields; they join in that order while the router's tables fit its share
of the budget, and fields that gain nothing are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchrec_aes.data.dataset import CTRData
from torchrec_aes.models.grouped import Router


def _scores(
    ids: torch.Tensor, groups: torch.Tensor, rows: int, k: int, prior: torch.Tensor, a: float
) -> torch.Tensor:
    """S[id, k] from (id, group of its row) pairs: every id of a bag counts for its row's group."""
    counts = torch.zeros(rows, k, dtype=torch.float64)
    counts.index_put_((ids, groups), torch.ones(len(ids), dtype=torch.float64), accumulate=True)
    p = (counts + a * prior) / (counts.sum(1, keepdim=True) + a)
    return (p.log() - prior.log()).float()


def field_pairs(ids: torch.Tensor | CTRData, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row of each id, id) of field j: an [N, F] id matrix has one id per row; bags (`CTRData`) any."""
    if isinstance(ids, torch.Tensor):
        return torch.arange(len(ids)), ids[:, j]
    lengths = ids.field_lengths(j)
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths), ids.field_ids(j)


def heldout_gain(
    rows_of: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, rows: int, k: int, a: float
) -> float:
    """Mean over the odd rows of the router's vote for the true group, sum over a row's ids of
    log P(true group | id) - log p_group, counted on the even rows (nats); `rows_of` [ids] is each id's
    row, `groups` [N] each row's group."""
    prior = _prior(groups, k)
    fit, held = rows_of % 2 == 0, rows_of % 2 == 1
    s = _scores(ids[fit], groups[rows_of[fit]], rows, k, prior, a)
    odd_rows = len(groups) // 2
    return float(s[ids[held], groups[rows_of[held]]].sum()) / max(odd_rows, 1)


def _prior(groups: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(groups, minlength=k).double() + 1.0
    return counts / counts.sum()


def fit_router(
    ids: torch.Tensor,
    groups: torch.Tensor,
    features: list[str],
    rows: list[int],
    k: int,
    smoothing: float,
    fits: Callable[[list[str]], bool],
) -> tuple[Router, list[dict]]:
    """The router for a clustered sample.

    Args:
        ids: [N, F] ids of the sample (columns in `features` order), or its bags (`CTRData`).
        groups: [N] group of each row.
        features, rows: the fields and their table rows.
        k: groups.
        smoothing: the pseudo-count a.
        fits: whether a router reading these features fits its share of the budget.

    Returns:
        (the router, per field {feature, gain, used}).
    """
    prior = _prior(groups, k)
    pairs = [field_pairs(ids, j) for j in range(len(features))]
    gains = [heldout_gain(r, i, groups, rows[j], k, smoothing) for j, (r, i) in enumerate(pairs)]
    order = sorted(range(len(features)), key=lambda j: -gains[j])
    chosen: list[int] = []
    if k > 1:
        for j in order:
            if gains[j] <= 0:
                break
            if fits([features[i] for i in chosen + [j]]):
                chosen.append(j)
    tables = []
    for j in chosen:
        rows_of, field_ids = pairs[j]
        s = _scores(field_ids, groups[rows_of], rows[j], k, prior, smoothing)
        pad = -(-k // 4) * 4 - k
        tables.append(torch.nn.functional.pad(s, (0, pad)))
    router = Router([features[j] for j in chosen], tables, prior.log().float())
    report = [{"feature": f, "gain": gains[j], "used": j in chosen} for j, f in enumerate(features)]
    return router, report
