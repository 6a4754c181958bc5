"""Regularized (aging) evolution (Real et al. 2019, as NASRec uses it), over any candidate type.

A population of scored candidates; each generation samples `sample_size` of them, takes the best as the
parent, makes `children` mutated children (mutations per child falling linearly from `mutations` to 1),
scores them all in one call (so the caller can score them in parallel across ranks), appends them and
removes the oldest. Candidates are deduplicated by `key()`; one that fails `fits` (over the budget) is
never scored. Everything random comes from `rng`, so the same seed and scores give the same search on
every rank.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvolutionResult:
    """scored: every scored candidate with its score, in scoring order; best_per_generation: the best score
    so far after the initial population (index 0) and after each generation."""

    scored: list[tuple[Any, float]] = field(default_factory=list)
    best_per_generation: list[float] = field(default_factory=list)

    def top(self, k: int) -> list[tuple[Any, float]]:
        """The k best distinct candidates, best first (ties: the earlier scored)."""
        order = sorted(range(len(self.scored)), key=lambda i: (-self.scored[i][1], i))
        return [self.scored[i] for i in order[:k]]


def mutations_at(generation: int, generations: int, start: int) -> int:
    """Mutations per child: `start` in the first generation, falling linearly to 1 in the last."""
    if generations <= 1:
        return start
    return max(1, round(start - (start - 1) * generation / (generations - 1)))


def evolve(
    score_many: Callable[[Sequence[Any]], list[float]],
    new_candidate: Callable[[random.Random], Any],
    mutate: Callable[[random.Random, Any, int], Any],
    fits: Callable[[Any], bool],
    rng: random.Random,
    population: int,
    sample_size: int,
    children: int,
    generations: int,
    mutations: int,
    on_generation: Callable[[int, EvolutionResult], None] | None = None,
    max_tries: int = 100,
    seeds: Sequence[Any] = (),
) -> EvolutionResult:
    """Runs the search; higher scores are better.

    Args:
        score_many: scores a list of candidates (may run them in parallel; returns scores in order).
        new_candidate: a random candidate (the initial population).
        mutate: (rng, parent, mutations) -> a child.
        fits: whether a candidate is within the budget (one that is not is never scored).
        rng: the only source of randomness.
        population, sample_size, children, generations, mutations: see `NASRecConfig`.
        on_generation: called after the initial population (generation -1) and each generation.
        max_tries: attempts per wanted candidate before giving up on new ones (small spaces run dry).
        seeds: candidates the initial population starts with (those that fit, once each); random ones
            fill the rest.

    Raises:
        ValueError: no candidate of the initial population fits the budget.
    """
    result = EvolutionResult()
    seen: set[str] = set()

    def fresh(make: Callable[[], Any], wanted: int) -> list[Any]:
        out: list[Any] = []
        for _ in range(wanted * max_tries):
            if len(out) == wanted:
                break
            c = make()
            if c.key() in seen or not fits(c):
                continue
            seen.add(c.key())
            out.append(c)
        return out

    initial: list[Any] = []
    for c in seeds:
        if len(initial) < population and c.key() not in seen and fits(c):
            seen.add(c.key())
            initial.append(c)
    initial += fresh(lambda: new_candidate(rng), population - len(initial))
    if not initial:
        raise ValueError("no candidate fits the budget")
    pool: deque[tuple[Any, float]] = deque()
    for c, s in zip(initial, score_many(initial), strict=True):
        pool.append((c, s))
        result.scored.append((c, s))
    result.best_per_generation.append(max(s for _, s in result.scored))
    if on_generation:
        on_generation(-1, result)
    for gen in range(generations):
        m = mutations_at(gen, generations, mutations)
        sample = rng.sample(list(pool), min(sample_size, len(pool)))
        parent = max(sample, key=lambda cs: cs[1])[0]

        def make_child(p: Any = parent, m: int = m) -> Any:
            return mutate(rng, p, m)

        kids = fresh(make_child, children)
        for c, s in zip(kids, score_many(kids) if kids else [], strict=True):
            pool.append((c, s))
            result.scored.append((c, s))
        while len(pool) > population:
            pool.popleft()  # aging: the oldest goes, whatever its score
        result.best_per_generation.append(max(s for _, s in result.scored))
        if on_generation:
            on_generation(gen, result)
    return result
