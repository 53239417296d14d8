"""Intervals over seeds for the benchmarks' learning claims.

Written here (not scipy) because the benchmarks need one quantile table: Student's t at
97.5% for the few degrees of freedom a handful of seeds gives.
"""

from __future__ import annotations

import statistics

# Student's t, 0.975 quantile, by degrees of freedom (standard tables).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """The 0.975 quantile for `df` degrees of freedom (the nearest smaller tabled df above 10:
    a slightly wider, conservative interval); 1.96 beyond 30."""
    if df > 30:
        return 1.96
    return T975[max(k for k in T975 if k <= df)]


def t_interval(xs: list[float]) -> list[float]:
    """95% t-interval [low, high] of the mean of `xs` (the mean twice for one value).

    >>> [round(x, 3) for x in t_interval([1.0, 2.0, 3.0])]
    [-0.484, 4.484]
    """
    m = statistics.mean(xs)
    if len(xs) < 2:
        return [m, m]
    h = t975(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return [m - h, m + h]


def paired_points(runs: list[dict], arm: str, baseline: str) -> tuple[float | None, list[float] | None]:
    """`arm`'s final accuracy minus `baseline`'s, in points, paired by seed (same seed, same
    start model and test prompts): the mean and its 95% t-interval; (None, None) for the
    baseline itself or where no seed has both. `runs` are `long_cot.run_arm` results.

    >>> runs = [{"arm": a, "seed": s, "acc_after": x} for a, s, x in
    ...         [("b", 0, 0.5), ("b", 1, 0.6), ("a", 0, 0.7), ("a", 1, 0.7)]]
    >>> mean, ci = paired_points(runs, "a", "b"); round(mean, 6), ci is not None
    (15.0, True)
    >>> paired_points(runs, "b", "b")
    (None, None)
    """
    base = {r["seed"]: r["acc_after"] for r in runs if r["arm"] == baseline}
    diffs = [100 * (r["acc_after"] - base[r["seed"]]) for r in runs if r["arm"] == arm and r["seed"] in base]
    if arm == baseline or not diffs:
        return None, None
    return statistics.mean(diffs), t_interval(diffs)


def proportion_interval(successes: int, n: int) -> list[float]:
    """95% normal-approximation interval [low, high] of a proportion (the one evaluations report).

    >>> [round(x, 3) for x in proportion_interval(50, 100)]
    [0.402, 0.598]
    """
    p = successes / n
    h = 1.96 * (p * (1 - p) / n) ** 0.5
    return [p - h, p + h]
