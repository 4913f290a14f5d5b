"""The course's one noise rule, for every comparison of two arms over seeds (or over test items).

Two arms trained with the same seeds (same data order, same initial draws where they share them) are compared
*paired*: the difference per seed, its mean, and its standard deviation with ddof=1. A difference is beyond the
noise when the two-sided 95% interval of its mean, mean ± t·sd/√n (Student's t with n − 1 degrees of freedom),
leaves out zero. With 3 seeds t is 4.30, not 1.96: few seeds buy a wide interval, and the rule says so.
Where one run per arm is all there is, the pairs are the test items (right or wrong, item by item); where runs share
no seed and no item (load tests made one after the other), `unpaired_difference` is the same rule, unpaired.
"""
from __future__ import annotations

import math
from typing import Sequence

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; 1.96 beyond the table.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_975(dof: int) -> float:
    """The two-sided 95% critical value of Student's t with `dof` degrees of freedom (the nearest smaller table row)."""
    if dof < 1:
        raise ValueError(f"the noise rule needs at least 2 seeds per arm (got {dof + 1}): train more seeds")
    return 1.96 if dof > 30 else T_975[max(d for d in T_975 if d <= dof)]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the standard deviation with ddof=1 (nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | bool]:
    """a − b seed by seed: {"mean", "sd" (ddof=1), "half_width" (95%, two-sided), "beyond_noise"}."""
    if len(a) != len(b):
        raise ValueError(f"a paired comparison needs one value per seed in each arm (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean, sd = _mean_sd(diffs)
    half = t_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "half_width": half, "beyond_noise": abs(mean) > half}


def unpaired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | bool]:
    """mean(a) − mean(b) where nothing pairs the runs (e.g. load tests run one after the other): {"mean", "sd" (of
    the difference: √(sa²/na + sb²/nb), each sd with ddof=1), "half_width" (95%, two-sided, Welch's degrees of
    freedom), "beyond_noise"}. Use `paired_difference` whenever the runs share seeds or test items."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the noise rule needs at least 2 runs per arm (got {len(a)} and {len(b)}): run more repeats")
    (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)                    # the variances of the two means
    sd = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    half = t_975(max(1, int(dof))) * sd
    return {"mean": ma - mb, "sd": sd, "half_width": half, "beyond_noise": abs(ma - mb) > half}


def proportion_half_width(p: float, n: int) -> float:
    """The 95% half-width of an accuracy `p` measured on `n` independent examples (the test set's own noise)."""
    return 1.96 * math.sqrt(p * (1 - p) / n)


def new_run_half_width(values: Sequence[float]) -> float:
    """How far one more run of the same recipe may land from the mean of `values` (runs over seeds), 95% two-sided:
    t·sd·√(1 + 1/n), sd with ddof=1 (a prediction interval: the new run's own noise plus the mean's)."""
    n = len(values)
    return t_975(n - 1) * _mean_sd(values)[1] * math.sqrt(1 + 1 / n)
