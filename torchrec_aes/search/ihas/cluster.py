"""Mini-batch K-Means (Sculley, 2010) in torch, the adjusted Rand index and Spearman's rank correlation.

Why our own ~40 lines and not scikit-learn: it adds no dependency, runs on the tensors where they are (CPU
or GPU), and is a pure function of (points, K, seed), so every rank of a distributed search computes the
same centroids from the same gathered sample without a broadcast.
"""

from __future__ import annotations

import math

import torch


def _init_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to squared distance."""
    centres = [x[int(torch.randint(len(x), (1,), generator=gen))]]
    dist = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(dist.sum())
        idx = (
            int(torch.multinomial(dist / total, 1, generator=gen))
            if total > 0
            else int(torch.randint(len(x), (1,), generator=gen))
        )
        centres.append(x[idx])
        dist = torch.minimum(dist, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(centres)


def assign(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[N] index of the nearest centre of each point."""
    return torch.cdist(x, centres).argmin(dim=1)


def minibatch_kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iters: int = 200, batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mini-batch K-Means.

    Args:
        x: [N, D] points (float).
        k: clusters (<= N).
        seed: seeds the initialisation and the batches.
        iters: mini-batch updates.
        batch: points per update.

    Returns:
        (centres [k, D], assignment [N] of every point to its nearest centre).
    """
    x = x.float()
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means: k={k} clusters for {len(x)} points")
    gen = torch.Generator().manual_seed(seed)
    centres = _init_plus_plus(x, k, gen).clone()
    counts = torch.zeros(k)
    for _ in range(iters):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        points = x[idx]
        nearest = assign(points, centres)
        for c in range(k):
            members = points[nearest == c]
            if len(members):
                counts[c] += len(members)
                # Per-centre learning rate 1/count (Sculley's update, vectorised over the members).
                centres[c] += (members.sum(0) - len(members) * centres[c]) / counts[c]
    return centres, assign(x, centres)


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Adjusted Rand index of two labelings of the same points (1 = identical up to names, ~0 = chance)."""
    a, b = a.long(), b.long()
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    table = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    table.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)

    def pairs(v: torch.Tensor) -> float:
        return float((v * (v - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = math.comb(len(a), 2)
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2 - expected
    return 1.0 if top == 0 else (index - expected) / top


def _ranks(values: list[float]) -> list[float]:
    """Ranks with ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (ties averaged; 0 when either is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else 0.0
