"""AdaS&S's final budget step: from the policy's choice to an architecture that never exceeds the budget,
with every accept/reject judged against the measured noise of the scores (no fixed AUC thresholds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torchrec_aes.supernet.stats import z_for


class Judge(Protocol):
    """How the budget step scores architectures (candidate index per table) and compares two of them.

    `part` names rows of the scoring data: "select" and "confirm" are disjoint halves, "all" is both.
    """

    def score(self, choice: Sequence[int], part: str) -> float:
        """Quality on `part` (higher is better, e.g. val AUC)."""
        ...

    def compare(self, a: Sequence[int], b: Sequence[int], part: str) -> tuple[float, float]:
        """quality(b) - quality(a) on `part` and the standard error of that paired difference."""
        ...


class NoiselessJudge:
    """A judge over one deterministic score (no halves, zero standard error): for tests and toy scores."""

    def __init__(self, fn: Callable[[list[int]], float]) -> None:
        self.fn = fn

    def score(self, choice: Sequence[int], part: str) -> float:
        return self.fn(list(choice))

    def compare(self, a: Sequence[int], b: Sequence[int], part: str) -> tuple[float, float]:
        return self.fn(list(b)) - self.fn(list(a)), 0.0


def fit_to_budget(
    choice: Sequence[int],
    table_bytes: Sequence[Sequence[int]],
    budget: int,
    judge: Judge,
    confidence: float = 0.95,
    fill: bool = False,
) -> tuple[list[int], list[str]]:
    """The final budget step: the result never costs more than `budget`.

    A move changes one table to any other candidate (not only the next one: a weight-shared supernet can
    score a middle candidate below both neighbours, and one-step moves would stop there).

    1. Free shrink: while some table can take a smaller candidate whose loss on all scoring rows is not
       significant (loss < z * its standard error, z the one-sided quantile of `confidence`), make the move
       that saves the most bytes.
    2. While over budget: make the shrink with the least loss per byte saved (on all rows).
    3. While a grow fits: *select* the grow with the most gain per byte on the "select" half and *accept*
       it only if the independent "confirm" half shows a significant gain (gain > z * standard error);
       grows are tried in that order, the k-th of a round against z for an error rate divided by k
       (Bonferroni), so trying many does not make a lucky one likely. With `fill`, a grow is accepted
       whenever it gains on the select half (the budget-filling variant, which the final pick weighs
       against the others on validation).

    Why select-then-confirm: the best of ~100 moves on one slice is mostly the one with the luckiest
    noise; an independent half carries no selection bias. Why standard errors and not a fixed AUC
    tolerance: a tolerance tuned on one data set shrank nearly every table of another to the smallest dim.

    Args:
        choice: candidate index per table to start from.
        table_bytes: [F][K] cost of table f at candidate k, increasing in k.
        budget: the budget in the same unit.
        judge: scores and paired comparisons with standard errors.
        confidence: one-sided confidence a loss must reach to block a free shrink and a gain to accept a
            grow (a statistical level, not a per-data-set constant).
        fill: grow on the select half alone (use the budget).

    Returns:
        The final choice and a log of the moves ("shrink <table index> -> <candidate index>", ...).

    Raises:
        ValueError: even every table at its smallest candidate is over the budget.
    """
    z = z_for(confidence)
    cur = [int(k) for k in choice]
    smallest = sum(row[0] for row in table_bytes)
    if smallest > budget:
        raise ValueError(f"budget {budget} is below the smallest architecture ({smallest})")
    moves: list[str] = []

    def cost(c: list[int]) -> int:
        return sum(table_bytes[f][k] for f, k in enumerate(c))

    def neighbours(smaller: bool) -> list[tuple[int, int, int, list[int]]]:
        """(f, k, bytes changed, choice) of every move of one table to a smaller/larger candidate."""
        out = []
        for f, k_cur in enumerate(cur):
            ks = range(k_cur) if smaller else range(k_cur + 1, len(table_bytes[f]))
            for k in ks:
                c = list(cur)
                c[f] = k
                out.append((f, k, abs(table_bytes[f][k] - table_bytes[f][k_cur]), c))
        return out

    while True:  # 1. free shrink
        free = []
        for f, k, saved, c in neighbours(smaller=True):
            gain, se = judge.compare(cur, c, "all")
            if gain >= -z * se:
                free.append((saved, gain, f, k, c))
        if not free:
            break
        _, gain, f, k, cur = max(free, key=lambda o: (o[0], o[1]))
        moves.append(f"free-shrink {f} -> {k} ({gain:+.5f})")
    while cost(cur) > budget:  # 2. shrink while over budget
        base = judge.score(cur, "all")
        f, k, saved, c = min(
            neighbours(smaller=True), key=lambda o: (base - judge.score(o[3], "all")) / max(o[2], 1)
        )
        cur = c
        moves.append(f"shrink {f} -> {k}")
    while True:  # 3. grow while there is slack
        total = cost(cur)
        base = judge.score(cur, "select")
        grows = []
        for f, k, added, c in neighbours(smaller=False):
            if total + added > budget:  # checked first: a grow that does not fit is not scored
                continue
            gain = judge.score(c, "select") - base
            if gain > 0:
                grows.append((gain / max(added, 1), f, k, c))
        grows.sort(key=lambda o: -o[0])
        accepted = None
        for tries, (_, f, k, c) in enumerate(grows[:1] if fill else grows, start=1):
            if fill:
                accepted = (f, k, c, "")
                break
            gain, se = judge.compare(cur, c, "confirm")
            if gain > 0 and gain > z_for(1 - (1 - confidence) / tries) * se:
                accepted = (f, k, c, f" ({gain:+.5f} ± {se:.5f})")
                break
        if accepted is None:
            break
        f, k, cur, note = accepted
        moves.append(f"grow {f} -> {k}{note}")
    return cur, moves
