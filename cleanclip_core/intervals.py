"""Uncertainty of a study's results: 95% intervals of a cell's mean over replicates, and of the
paired difference between two values of a dimension (two cleaning methods, say) on the same
starts and seeds.

A cell is a study summary row without its replicate seeds. With two replicates or more its
interval is Student's t over them (the spread of what a rerun with new seeds gives). With one
replicate there is no spread of runs to measure, so the interval is the evaluation images'
alone: Wilson's score interval of the proportion, and Newcombe's hybrid score interval for a
difference of two proportions (it treats the two as independent, which on the same images is
conservative when the two models agree on most images).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of `values` (two or more)."""
    values = np.asarray(values, dtype=float)
    mean = values.mean()
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(mean), float(mean - half), float(mean + half)


def wilson_interval(proportion: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """(low, high): Wilson's score interval of a proportion observed over n trials."""
    z = stats.norm.ppf((1 + level) / 2)
    centre = (proportion + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(proportion * (1 - proportion) / n + z**2 / (4 * n**2))
    return max(float(centre - half), 0.0), min(float(centre + half), 1.0)  # exact at 0 and 1, without rounding's residue


def newcombe_interval(p: float, n_p: int, q: float, n_q: int, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) of p - q, from each proportion's Wilson interval (Newcombe's method 10)."""
    p_low, p_high = wilson_interval(p, n_p, level)
    q_low, q_high = wilson_interval(q, n_q, level)
    difference = p - q
    return (
        float(difference - np.hypot(p - p_low, q_high - q)),
        float(difference + np.hypot(p_high - p, q - q_low)),
    )


def proportion_t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a proportion over two or more replicates: Student's t, within [0, 1]."""
    mean, low, high = t_interval(values)
    return mean, max(low, 0.0), min(high, 1.0)


def _cell_interval(values: pd.Series, n_evaluated: int) -> tuple[float, float, float]:
    """A cell's (mean, low, high) of one proportion over its replicates (NaN ones left out)."""
    values = values.dropna()
    if len(values) >= 2:
        return proportion_t_interval(values)
    if len(values) == 1:
        return (float(values.iloc[0]), *wilson_interval(float(values.iloc[0]), n_evaluated))
    return (np.nan, np.nan, np.nan)


def cell_intervals(
    replicates: pd.DataFrame, cell: Sequence[str], metrics: Mapping[str, str]
) -> pd.DataFrame:
    """One row per cell (the `cell` columns) of `replicates`: `n_replicates`, and per metric (a
    proportion column, mapped to the column counting the images it was measured on) its mean
    over the replicates that have it, `{metric}_low` and `{metric}_high`."""
    rows = []
    for key, group in replicates.groupby(list(cell), sort=True, dropna=False):
        row = dict(zip(cell, key)) | {"n_replicates": len(group)}
        for metric, count in metrics.items():
            row |= dict(zip((metric, f"{metric}_low", f"{metric}_high"), _cell_interval(group[metric], group[count].max())))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*cell, "n_replicates", *interval_columns(metrics)])


def interval_columns(metrics: Sequence[str]) -> list[str]:
    return [column for metric in metrics for column in (metric, f"{metric}_low", f"{metric}_high")]


def paired_difference(a: pd.Series, b: pd.Series, n_a: int, n_b: int) -> tuple[float, float, float]:
    """(mean, low, high) of a - b, two proportions, over the replicates paired row by row (NaN
    pairs left out): a t interval of the paired differences (within [-1, 1]), or with one pair
    Newcombe's interval."""
    pairs = pd.DataFrame({"a": a.to_numpy(), "b": b.to_numpy()}).dropna()
    if len(pairs) >= 2:
        mean, low, high = t_interval(pairs.a - pairs.b)
        return mean, max(low, -1.0), min(high, 1.0)
    if len(pairs) == 1:
        first = pairs.iloc[0]
        return (float(first.a - first.b), *newcombe_interval(first.a, n_a, first.b, n_b))
    return (np.nan, np.nan, np.nan)
