"""AdaS&S's final budget step: from the policy's choice to an architecture that never exceeds the budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def fit_to_budget(
    choice: Sequence[int],
    table_bytes: Sequence[Sequence[int]],
    budget: int,
    score: Callable[[list[int]], float],
    min_gain: float = 0.0,
    confirm: Callable[[list[int]], float] | None = None,
    tolerance: float | None = None,
) -> tuple[list[int], list[str]]:
    """The final budget step: the result never costs more than `budget`.

    A move changes one table to any other candidate (not only the next one: a weight-shared supernet can
    score a middle candidate below both neighbours, and one-step moves would stop there).

    1. Free shrink: while some table can take a smaller candidate without lowering the score, make the
       move that saves the most bytes.
    2. While over budget: make the shrink with the least score loss per byte saved.
    3. While a grow fits: make the grow with the most score gain per byte added, if its gain > `min_gain`.

    With `confirm` (ours, see `AdaSSConfig.confirm_moves`), `score` and `confirm` are two independent
    scorings (disjoint halves of the val slice). Each grow is still *selected* on `score` alone, but
    accepted only if `confirm` also shows a gain > `min_gain`; otherwise the next best grow by `score` is
    tried. Why: the best of ~100 moves on one slice is mostly the one with the luckiest noise, so grows
    worth less than the noise won and left signal-free tables above the smallest dim; an independent
    half carries no selection bias. A shrink is free if neither half loses more than `min_gain` (the
    scale below which a difference counts as noise), and forced shrinks (step 2) use the sum of both
    halves' scores, since one is made anyway and more rows rank them better.

    Args:
        choice: candidate index per table to start from.
        table_bytes: [F][K] cost of table f at candidate k, increasing in k.
        budget: the budget in the same unit.
        score: architecture (candidate index per table) -> quality, higher is better (e.g. val AUC).
        min_gain: smallest score gain a grow must bring (on both scorings with `confirm`).
        confirm: a second, independent scoring of the same quality, or None (select and accept on `score`).
        tolerance: with `confirm`, the largest loss (on either half) a free shrink may cost; default
            `min_gain`.

    Returns:
        The final choice and a log of the moves ("shrink <table index> -> <candidate index>", ...).

    Raises:
        ValueError: even every table at its smallest candidate is over the budget.
    """
    cur = [int(k) for k in choice]
    smallest = sum(row[0] for row in table_bytes)
    if smallest > budget:
        raise ValueError(f"budget {budget} is below the smallest architecture ({smallest})")
    moves: list[str] = []

    def scores(c: list[int]) -> tuple[float, float]:
        """(selection score, confirmation score); without `confirm` both are `score`."""
        s = score(c)
        return s, (confirm(c) if confirm is not None else s)

    cur_score = scores(cur)

    def options(smaller: bool) -> list[tuple[int, int, int, list[int], tuple[float, float]]]:
        """(f, k, bytes changed, choice, scores) of every move of one table to a smaller/larger candidate."""
        out = []
        for f, k_cur in enumerate(cur):
            ks = range(k_cur) if smaller else range(k_cur + 1, len(table_bytes[f]))
            for k in ks:
                c = list(cur)
                c[f] = k
                out.append((f, k, abs(table_bytes[f][k] - table_bytes[f][k_cur]), c, scores(c)))
        return out

    def cost(c: list[int]) -> int:
        return sum(table_bytes[f][k] for f, k in enumerate(c))

    def is_free(s: tuple[float, float]) -> bool:
        if confirm is None:
            return s[0] >= cur_score[0]
        tol = min_gain if tolerance is None else tolerance
        return s[0] >= cur_score[0] - tol and s[1] >= cur_score[1] - tol

    while True:  # 1. free shrink
        free = [o for o in options(smaller=True) if is_free(o[4])]
        if not free:
            break
        f, k, _, cur, cur_score = max(free, key=lambda o: (o[2], o[4][0] + o[4][1]))
        moves.append(f"free-shrink {f} -> {k}")
    while cost(cur) > budget:  # 2. shrink while over budget
        f, k, _, cur, cur_score = min(
            options(smaller=True),
            key=lambda o: (cur_score[0] + cur_score[1] - o[4][0] - o[4][1]) / max(o[2], 1),
        )
        moves.append(f"shrink {f} -> {k}")
    while True:  # 3. grow while there is slack
        total = cost(cur)
        grows = [
            o for o in options(smaller=False) if total + o[2] <= budget and o[4][0] - cur_score[0] > min_gain
        ]
        grows.sort(key=lambda o: -(o[4][0] - cur_score[0]) / max(o[2], 1))
        confirmed = next((o for o in grows if o[4][1] - cur_score[1] > min_gain), None)
        if confirmed is None:
            break
        f, k, _, cur, cur_score = confirmed
        moves.append(f"grow {f} -> {k}")
    return cur, moves
