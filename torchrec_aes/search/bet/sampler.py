"""BET's budget-guaranteed action sampler: row-wise sizes for every user and item within the budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from torchrec_aes.models.cf import ITEM, USER
from torchrec_aes.models.rowwise import RowCost

DISTRIBUTIONS = ("power", "truncated_exponential", "truncated_normal", "lognormal")


@dataclass
class Action:
    """Row sizes of one candidate: user_dims [U] and item_dims [I], multiples of the quantum.

    Args:
        user_dims: [U] int64 sizes.
        item_dims: [I] int64 sizes.
        info: how it was drawn (user share, distributions and their parameters), for logs.
    """

    user_dims: torch.Tensor
    item_dims: torch.Tensor
    info: dict[str, Any]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {USER: self.user_dims, ITEM: self.item_dims}


def _draw_values(n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """n positive values from one of the four distributions with a random shape (the paper's ranges)."""
    kind = DISTRIBUTIONS[int(torch.randint(len(DISTRIBUTIONS), (1,), generator=generator))]
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    shape = float(torch.rand(1, generator=generator, dtype=torch.float64))
    if kind == "power":  # density a x^(a-1) on [0, 1], a ~ U(0, 20)
        a = max(20.0 * shape, 1e-3)
        values = u ** (1.0 / a)
    elif kind == "truncated_exponential":  # Exp(1) truncated to [0, b], b ~ U(0, 5)
        a = max(5.0 * shape, 1e-6)
        values = -torch.log1p(-u * (1.0 - math.exp(-a)))
    elif kind == "truncated_normal":  # N(0, 1) truncated to [0, beta], beta ~ U(0, 20)
        a = max(20.0 * shape, 1e-6)
        top = float(torch.special.ndtr(torch.tensor(a, dtype=torch.float64)))
        values = torch.special.ndtri(0.5 + u * (top - 0.5))
    else:  # log-normal, sigma ~ U(0, 0.5)
        a = 0.5 * shape
        values = torch.exp(a * torch.randn(n, generator=generator, dtype=torch.float64))
    values = torch.nan_to_num(values.clamp(min=0.0), nan=0.0, posinf=0.0)
    if float(values.sum()) <= 0:
        values = torch.ones(n, dtype=torch.float64)
    return values, {"distribution": kind, "shape": a}


def _fill(free: int, values: torch.Tensor, cap: int) -> torch.Tensor:
    """Splits `free` quanta over rows in proportion to `values`, each row at most `cap`: floor, then the
    leftover to the largest remainders, then (if clipped at `cap`) to the largest values with room."""
    share = values / values.sum() * free
    extra = torch.floor(share).long().clamp(max=cap)
    left = free - int(extra.sum())
    remainder = torch.where(extra < cap, share - extra, torch.full_like(share, -1.0))
    while left > 0:
        room = int((extra < cap).sum())
        if room == 0:
            break
        take = min(left, room)
        idx = torch.topk(remainder, take).indices
        extra[idx] += 1
        left -= take
        remainder[idx] = torch.where(extra[idx] < cap, values[idx] / values.max(), -1.0)
    return extra


class ActionSampler:
    """Samples row-wise sizes that never exceed the budget; more frequent rows never get smaller sizes.

    The budget is `budget` in the unit of `cost` (bytes or parameters). Every row is reserved one quantum
    (`multiple`) up front, so the clamp to the minimum size cannot overrun the budget; the remaining
    quanta are split between users (share w ~ U(0, 1)) and items, then over the rows of each side by one
    of four distributions (normalise, scale to the side's quanta, floor, leftover to the largest
    remainders). A side whose largest size exceeds d_max is redrawn; sizes are sorted and the largest go
    to the most frequent rows (ties by id).

    Args:
        user_freq: [U] training interactions per user.
        item_freq: [I] training interactions per item.
        budget: what all rows may cost.
        cost: per-row cost (`RowCost.of(optimizer, count)`).
        max_dim: d_max.
        multiple: size quantum (4 for FBGEMM).
        max_redraws: redraws per side before clipping to d_max.

    Raises:
        ValueError: the budget cannot give every row the smallest size (says the minimum).
    """

    def __init__(
        self,
        user_freq: torch.Tensor,
        item_freq: torch.Tensor,
        budget: int,
        cost: RowCost,
        max_dim: int = 128,
        multiple: int = 4,
        max_redraws: int = 20,
    ) -> None:
        if max_dim % multiple or max_dim < multiple:
            raise ValueError(f"search.bet.max_dim: {max_dim} must be a positive multiple of {multiple}")
        self.multiple, self.max_dim, self.max_redraws = multiple, max_dim, max_redraws
        self.num_users, self.num_items = user_freq.numel(), item_freq.numel()
        self.quanta_max = max_dim // multiple
        rows = self.num_users + self.num_items
        reserve = cost.total(torch.full((rows,), multiple))
        if reserve > budget:
            raise ValueError(
                f"budget {budget} is below {reserve}, the cost of every user and item at size {multiple}"
            )
        per_quantum = cost.per_dim * multiple
        self.free = min((budget - reserve) // per_quantum, rows * (self.quanta_max - 1))
        # Stable sort by descending frequency: position j holds the j-th most frequent row.
        self.user_order = torch.sort(-user_freq.long(), stable=True).indices
        self.item_order = torch.sort(-item_freq.long(), stable=True).indices

    def _side(
        self, n: int, free: int, order: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        cap = self.quanta_max - 1
        redraws = 0
        values, info = _draw_values(n, gen)
        while float((values / values.sum() * free).max()) > cap + 1e-9 and redraws < self.max_redraws:
            values, info = _draw_values(n, gen)
            redraws += 1
        info["redraws"] = redraws
        extra = _fill(free, values, cap)  # clips at cap (only when redraws ran out) and refills
        quanta = 1 + torch.sort(extra, descending=True).values
        dims = torch.empty(n, dtype=torch.int64)
        dims[order] = quanta * self.multiple
        return dims, info

    def sample(self, generator: torch.Generator) -> Action:
        """One feasible action."""
        w = float(torch.rand(1, generator=generator, dtype=torch.float64))
        cap_u = self.num_users * (self.quanta_max - 1)
        cap_i = self.num_items * (self.quanta_max - 1)
        free_u = min(int(w * self.free), cap_u)
        free_i = min(self.free - free_u, cap_i)
        free_u = min(self.free - free_i, cap_u)  # what items cannot take goes back to users
        user_dims, user_info = self._side(self.num_users, free_u, self.user_order, generator)
        item_dims, item_info = self._side(self.num_items, free_i, self.item_order, generator)
        return Action(user_dims, item_dims, {"user_share": w, "user": user_info, "item": item_info})

    def uniform(self) -> Action:
        """The same-budget uniform action: the largest multiple of the quantum that every row can have."""
        rows = self.num_users + self.num_items
        quanta = min(1 + self.free // rows, self.quanta_max)
        dim = quanta * self.multiple
        return Action(
            torch.full((self.num_users,), dim, dtype=torch.int64),
            torch.full((self.num_items,), dim, dtype=torch.int64),
            {"uniform_dim": dim},
        )
