"""Rank-identical, step-seeded randomness for supernets.

Every rank of a supernet must use the same sampled architecture in every step (sharded lookups are
collectives, and a mismatched choice would train different subnets on different ranks). Instead of
broadcasting each choice, samplers draw from a generator that is a pure function of (seed, stream,
step), and update their state only with all-reduced values, so every rank computes the same choice.
"""

from __future__ import annotations

import torch


def step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """The same generator on every rank for (seed, stream, step): choices need no broadcast.

    Args:
        seed: the run's seed.
        stream: separates independent uses (e.g. 1 = supernet sampling, 2 = RL policy samples).
        step: the step (or update) index.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + step) % (2**63))
