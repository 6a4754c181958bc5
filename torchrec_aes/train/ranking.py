"""Full-ranking Recall@K and NDCG@K for CF, with known interactions masked, reduced over ranks.

Definitions follow LightGCN's evaluation code: for a user with test items T and top-K list L (every item
ranked, the user's known items masked out),

- Recall@K = |L ∩ T| / |T|;
- NDCG@K = DCG / IDCG with DCG = sum_{j < K} 1[L_j ∈ T] / log2(j + 2) and IDCG the DCG of min(|T|, K)
  hits at the top.

Both are averaged over users with at least one test item (others are skipped). Scoring is vectorised
and chunked over users: one [C, I] score matrix per chunk, known items set to -inf, `torch.topk` with the
largest K. With a process group, each rank ranks an interleaved share of the users and the sums are
all-reduced, so every rank returns the same numbers.

Example::

    users, items = model.final_embeddings()
    evaluate_ranking(users, items, data.test, exclude=[data.train, data.val])  # {"recall@20": ...}
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from torchrec_aes.data.interactions import CSR

DEFAULT_KS = (5, 10, 20)


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """[k] 1 / log2(j + 2) for positions j = 0..k-1."""
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float64) + 2.0)


def topk_items(scores: torch.Tensor, k: int, block: int = 64) -> torch.Tensor:
    """Indices of the k largest scores per row, best first: [C, I] -> [C, k].

    Two-stage (same result as `torch.topk` up to the order of exact ties, ~4x faster on CPU for
    k << I): the k blocks with the largest maxima hold the k largest entries (each of those entries
    lies in a block whose maximum is at least the k-th largest value, and there are at most k such
    blocks), so a top-k of block maxima followed by a top-k over k * block candidates is exact.

    Args:
        scores: [C, I] with I a multiple of `block` (pad with -inf), or any I for the plain path.
        k: how many to keep (<= I).
        block: block width.
    """
    num_rows, num_items = scores.shape
    if num_items % block or num_items // block <= k:
        return torch.topk(scores, k, dim=1, sorted=True).indices
    blocks = scores.view(num_rows, num_items // block, block)
    best = torch.topk(blocks.amax(dim=2), k, dim=1, sorted=False).indices  # [C, k]
    candidates = blocks.gather(1, best[:, :, None].expand(-1, -1, block)).view(num_rows, -1)  # [C, k*block]
    pos = torch.topk(candidates, k, dim=1, sorted=True).indices  # [C, k]
    return best.gather(1, pos // block) * block + pos % block


def ranking_sums(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    truth: CSR,
    exclude: list[CSR],
    users: torch.Tensor,
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Sums of Recall@K and NDCG@K over `users` (all of whom must have truth items).

    Args:
        user_emb: [U, D] final user embeddings.
        item_emb: [I, D] final item embeddings.
        truth: [U] rows of the items to find (test or validation).
        exclude: rows of known items to mask (e.g. train, and val when testing).
        users: [N] users to rank (CPU tensor).
        ks: cut-offs.
        chunk_size: users scored per chunk (memory ~ chunk_size * I * 4 bytes).

    Returns:
        [2 * len(ks) + 1] float64: recall sums per K, NDCG sums per K, number of users.
    """
    ks = list(ks)
    num_items = item_emb.shape[0]
    k_max = min(max(ks), num_items)
    device = user_emb.device
    discounts = _discounts(k_max, device)
    # ideal[m] = IDCG with m hits at the top; indexed by min(|T|, K).
    ideal = torch.cat([torch.zeros(1, device=device, dtype=torch.float64), torch.cumsum(discounts, 0)])
    sums = torch.zeros(2 * len(ks) + 1, dtype=torch.float64, device=device)
    # Pad the item axis to whole blocks for `topk_items`; padded columns score -inf.
    block = 64
    padded = -(-num_items // block) * block
    items_t = torch.zeros(item_emb.shape[1], padded, dtype=item_emb.dtype, device=device)
    items_t[:, :num_items] = item_emb.t()
    # One reused score buffer: a fresh [C, I] allocation per chunk costs page faults comparable to the
    # matmul itself on CPU.
    buffer = torch.empty(min(chunk_size, max(users.numel(), 1)), padded, dtype=item_emb.dtype, device=device)
    for start in range(0, users.numel(), chunk_size):
        chunk = users[start : start + chunk_size]
        scores = buffer[: chunk.numel()]
        torch.mm(user_emb[chunk.to(device)], items_t, out=scores)  # [C, I_pad]
        scores[:, num_items:] = -torch.inf
        for known in exclude:
            rows, items = known.gather(chunk)
            scores[rows.to(device), items.to(device)] = -torch.inf
        top = topk_items(scores, k_max, block).cpu()  # [C, k_max]
        hits = truth.contains(chunk[:, None].expand_as(top), top).to(device).double()  # [C, k_max]
        num_truth = truth.lengths[chunk].to(device).double()  # [C]
        cum_hits = torch.cumsum(hits, 1)
        dcg = torch.cumsum(hits * discounts, 1)
        for j, k in enumerate(ks):
            k_eff = min(k, k_max)
            sums[j] += (cum_hits[:, k_eff - 1] / num_truth).sum()
            best = ideal[torch.clamp(num_truth.long(), max=k_eff)]
            sums[len(ks) + j] += (dcg[:, k_eff - 1] / best).sum()
        sums[-1] += chunk.numel()
    return sums


def evaluate_ranking(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    truth: CSR,
    exclude: list[CSR],
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    group: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users with truth items, all-reduced over `group` when given.

    Every rank must hold the full `user_emb` and `item_emb`; each ranks users rank::world_size.

    Args:
        user_emb: [U, D] final user embeddings.
        item_emb: [I, D] final item embeddings.
        truth: [U] rows of the items to find.
        exclude: rows of known items to mask (training items at least).
        ks: cut-offs.
        chunk_size: users scored per chunk.
        group: process group to split users over and reduce in (None: this process alone).

    Returns:
        {"recall@K": ..., "ndcg@K": ... for each K, "users": number of users ranked}.
    """
    for k in ks:
        if k <= 0:
            raise ValueError(f"train.ranking_k: cut-offs must be positive, got {list(ks)}")
    candidates = torch.nonzero(truth.lengths > 0).flatten()
    rank, world = 0, 1
    if group is not None:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
    sums = ranking_sums(user_emb, item_emb, truth, exclude, candidates[rank::world], ks, chunk_size)
    if world > 1:
        dist.all_reduce(sums, group=group)
    count = max(float(sums[-1]), 1.0)
    out = {f"recall@{k}": float(sums[j]) / count for j, k in enumerate(ks)}
    out.update({f"ndcg@{k}": float(sums[len(ks) + j]) / count for j, k in enumerate(ks)})
    out["users"] = int(sums[-1])
    return out
