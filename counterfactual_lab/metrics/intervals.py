"""Confidence intervals: a cluster bootstrap by source image, and Wilson's score interval at the edges.

Every row derived from one source image (its original, reconstructions, counterfactuals, control,
the pairs built from them) is correlated with the others, so rows are not independent draws.
The **cluster bootstrap** resamples *sources* with replacement: each of ``B`` resamples draws
``C`` sources out of the ``C`` in the sample, and every row of a drawn source enters the
resample as many times as the source was drawn. The statistic is recomputed on each resample
and the interval is the ``(1 − c)/2`` and ``(1 + c)/2`` percentiles of the replicates (the
percentile method; Efron & Tibshirani 1993, ch. 13; Davison & Hinkley 1997, §3.8 for clusters).
Resamples where the statistic is undefined (a group missing from the resample, a group without
positives) are skipped and counted (``skipped_resamples``); they do not count as 0.

A **proportion of 0/n or n/n** has no variation to resample: every replicate equals the
estimate and the percentile interval is the point ``[0, 0]``. There the interval is Wilson's
score interval (Wilson 1927) with the number of *sources* as the sample size, which never
collapses to a point (0/n gives ``[0, z²/(C + z²)]``) and, counting a source once however many
rows it has, is conservative for clustered rows.

The same seed gives the same interval, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from counterfactual_lab.metrics.schema import Estimate

DEFAULT_SEED = 0
METHOD_CLUSTER_PERCENTILE = "cluster percentile bootstrap (resampling source images)"
METHOD_WILSON_AT_SOURCES = "Wilson score interval with n = number of source images (proportions at 0/n or n/n)"
# Cells (resamples × sources) of one block of resample counts: bounds memory at 32 MiB a block.
_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True)
class IntervalSettings:
    """How intervals are drawn: ``n_resamples`` bootstrap resamples at level ``confidence``, seeded."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")

    @classmethod
    def from_audit(cls, audit: Any) -> "IntervalSettings":
        """From an :class:`~counterfactual_lab.config.AuditModelConfig`."""
        return cls(audit.bootstrap_samples, audit.confidence, getattr(audit, "bootstrap_seed", DEFAULT_SEED))


def cluster_codes(ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """(code of each row's cluster in 0..C−1, C); clusters numbered in sorted order of their id."""
    values = np.asarray(ids, dtype=object)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    if any(v is None for v in values):
        raise ValueError("every row needs a source id to resample by (found a null source_id)")
    unique, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), len(unique)


class ClusterBootstrap:
    """``n_resamples`` seeded resamples of ``n_clusters`` clusters drawn with replacement.

    A resample is a row of counts: how many times each cluster was drawn (they sum to C).
    Blocks of rows are produced on demand so that memory stays bounded for large audits.
    """

    def __init__(self, n_clusters: int, settings: IntervalSettings) -> None:
        if n_clusters < 1:
            raise ValueError(f"cannot bootstrap an empty sample (n_clusters={n_clusters})")
        self.n_clusters = n_clusters
        self.settings = settings

    @property
    def n_resamples(self) -> int:
        return self.settings.n_resamples

    def count_blocks(self) -> Iterator[np.ndarray]:
        """Blocks of resample counts, ``(b, C)`` float arrays, in the same order on every call."""
        c, total, seed = self.n_clusters, self.settings.n_resamples, self.settings.seed
        if total * c <= _CHUNK_CELLS:  # one block: drawn once per (C, B, seed), shared by every metric
            yield _counts(c, total, seed)
            return
        rng = np.random.default_rng(seed)
        step = max(1, _CHUNK_CELLS // c)
        for start in range(0, total, step):
            yield _draw(rng, c, min(step, total - start))

    def sums(self, per_cluster: np.ndarray) -> np.ndarray:
        """Resampled totals: ``per_cluster`` is (C,) or (C, k) per-cluster sums; returns (B,) or (B, k)."""
        x = np.asarray(per_cluster, dtype=float)
        if x.shape[0] != self.n_clusters:
            raise ValueError(f"expected {self.n_clusters} per-cluster rows, got {x.shape[0]}")
        return np.concatenate([counts @ x for counts in self.count_blocks()], axis=0)


def _draw(rng: np.random.Generator, c: int, b: int) -> np.ndarray:
    draws = rng.integers(0, c, size=(b, c))
    flat = (draws + c * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * c).reshape(b, c).astype(float)


@functools.lru_cache(maxsize=8)
def _counts(c: int, b: int, seed: int) -> np.ndarray:
    counts = _draw(np.random.default_rng(seed), c, b)
    counts.flags.writeable = False  # shared between callers
    return counts


def z_value(confidence: float) -> float:
    """The standard normal quantile of ``(1 + confidence) / 2`` (1.96 at 95%)."""
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float | None, float | None, int]:
    """(low, high, skipped): percentiles of the finite replicates; NaN/inf replicates are skipped."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(replicates, dtype=float)
    finite = values[np.isfinite(values)]
    skipped = int(values.size - finite.size)
    if finite.size == 0:
        return None, None, skipped
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), skipped


def wilson_interval(successes: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n``.

    With p̂ = x/n and z the normal quantile::

        (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)
    """
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    z = z_value(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    # At 0/n and n/n one end is exactly 0 or 1; computed, it would be off by a rounding error.
    low = 0.0 if successes == 0 else max(0.0, (centre - spread) / denominator)
    high = 1.0 if successes == n else min(1.0, (centre + spread) / denominator)
    return float(low), float(high)


def _per_cluster(values: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    sums = np.bincount(codes, weights=values, minlength=n_clusters)
    counts = np.bincount(codes, minlength=n_clusters).astype(float)
    return np.column_stack([sums, counts])


def mean_estimate(values: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Mean of ``values`` with a cluster-bootstrap percentile interval.

    Each replicate is the resample's Σ values / number of rows (a ratio of resampled cluster
    totals). An empty sample is undefined.
    """
    values = np.asarray(values, dtype=float)
    codes, c = cluster_codes(clusters)
    if values.size == 0:
        return Estimate.undefined("no rows to average")
    if values.size != codes.size:
        raise ValueError(f"{values.size} values but {codes.size} cluster ids")
    if not np.isfinite(values).all():
        raise ValueError("values to average must be finite (drop rows without a score first)")
    per_cluster = _per_cluster(values, codes, c)
    totals = ClusterBootstrap(c, settings).sums(per_cluster)
    low, high, skipped = percentile_interval(totals[:, 0] / totals[:, 1], settings.confidence)
    return Estimate(float(values.mean()), low, high, int(values.size), c, skipped)


def proportion_estimate(successes: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Share of true ``successes``: cluster-bootstrap percentile interval, Wilson at 0/n and n/n.

    At 0/n or n/n the interval is :func:`wilson_interval` with x/n = the estimate and n = the
    number of source images (clusters) behind the rows.
    """
    hits = np.asarray(successes, dtype=bool)
    estimate = mean_estimate(hits.astype(float), clusters, settings)
    if estimate.value is None or 0.0 < estimate.value < 1.0:
        return estimate
    low, high = wilson_interval(estimate.value * estimate.n_sources, estimate.n_sources, settings.confidence)
    return Estimate(estimate.value, low, high, estimate.n, estimate.n_sources, estimate.skipped, estimate.note)
