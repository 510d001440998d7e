"""Seeded percentile-bootstrap confidence intervals.

Every interval in ``metrics.parquet`` comes from here, so every interval means the same
thing: resample the units the metric averages over (pairs, images, candidates) with
replacement, ``n_resamples`` times, recompute the statistic, and take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the replicates
(the percentile method, Efron & Tibshirani 1993, ch. 13). The same seed gives the same
interval, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_SEED = 0


def resample_indices(n: int, n_resamples: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """An ``(n_resamples, n)`` matrix of row indices drawn with replacement, seeded."""
    if n < 1:
        raise ValueError(f"cannot bootstrap an empty sample (n={n})")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n))


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """The percentile interval of bootstrap replicates; NaN replicates (undefined resamples) are ignored."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    data: Any,
    statistic: Callable[[Any], float] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval ``(low, high)`` of ``statistic(data)``.

    ``data`` is a 1-D sequence of values (the statistic defaults to the mean and runs
    vectorised) or anything indexable by an integer array along its first axis (a numpy
    array, a polars DataFrame), in which case ``statistic`` receives each resample.
    An empty sample gives ``(None, None)``.
    """
    n = len(data)
    if n == 0:
        return None, None
    indices = resample_indices(n, n_resamples, seed)
    if statistic is None:
        values = np.asarray(data, dtype=float)
        if values.ndim != 1:
            raise ValueError("bootstrap_ci without a statistic needs a 1-D sequence of numbers")
        return percentile_interval(values[indices].mean(axis=1), confidence)
    replicates = np.array([_as_float(statistic(_take(data, row))) for row in indices])
    return percentile_interval(replicates, confidence)


def _take(data: Any, rows: np.ndarray) -> Any:
    if hasattr(data, "__array__") and not hasattr(data, "columns"):
        return np.asarray(data)[rows]
    if hasattr(data, "columns"):  # polars or pandas frame
        try:
            return data[rows]
        except TypeError:
            return data.iloc[rows]
    return [data[i] for i in rows]


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)
