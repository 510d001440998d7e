"""Confidence intervals: a cluster bootstrap by source image, read as a t interval with C − 1
degrees of freedom; Wilson's score interval at the effective sample size for proportions.

Every row derived from one source image (its original, reconstructions, counterfactuals, control,
the pairs built from them) is correlated with the others, so rows are not independent draws.
The **cluster bootstrap** resamples *sources* with replacement: each of ``B`` resamples draws
``C`` sources out of the ``C`` in the sample, and every row of a drawn source enters the
resample as many times as the source was drawn (Davison & Hinkley 1997, §3.8). The statistic
is recomputed on each resample; resamples where it is undefined are skipped and counted
(``skipped_resamples``).

**Means** (pair and probe gaps, negative controls, drift, group means, CITS) get a t interval
on the bootstrap's standard error, with C − 1 degrees of freedom::

    se   = sd_b(θ*_b) · sqrt(C / (C − 1))        (the bootstrap variance is (C − 1)/C of the unbiased one)
    I(ℓ) = θ̂ ± t_{C−1, (1+ℓ)/2} · se

The percentile interval this replaces ran narrow with few clusters (it covered 88% at 6 sources
and 92% at 12 where 95% was asked; docs/metrics.md, "Intervals"), and reading far tails for the
levels of Holm's step-down needed tens of thousands of resamples; the t interval keeps its level
at 6, 12 and 24 clusters and gives an interval at any level in closed form (:func:`interval_at`),
which the error control needs.

**Proportions** (flip rates, selection rates, rates of generations) get Wilson's score interval
(Wilson 1927) at the *effective* sample size, with the t quantile for z (Korn & Graubard 1998)::

    n_eff = min(n, p̂(1 − p̂)/se²),  q = t_{C−1, (1+ℓ)/2}
    I(ℓ)  = (p̂ + q²/2n_eff ± q·sqrt(p̂(1 − p̂)/n_eff + q²/4n_eff²)) / (1 + q²/n_eff)

At 0/n and n/n (se = 0) n_eff = C, the number of source images: the interval never collapses to
a point (0/n gives [0, q²/(C + q²)]) and, counting a source once however many rows it has, is
conservative for clustered rows.

A row needs at least two source images for an interval (C − 1 ≥ 1 degrees of freedom).

**Sources and phrasings** (a probe asked in K phrasings, ``audit.phrasings``: the pooled row): the
same value of every pair is measured once per phrasing, so the rows are crossed, source × phrasing,
and the pooled mean must generalise over both. :func:`crossed_mean_estimates` resamples sources and
phrasings independently, each with replacement (the pigeonhole bootstrap, Owen 2007): a resample
weighs the rows of source c and phrasing k by a_c · b_k, a_c and b_k the times each was drawn, and
the replicate is Σ a_c b_k S_ck / Σ a_c b_k N_ck (S, N: the cell's sum and count). The standard
error and the t interval with C − 1 degrees of freedom follow as above; Owen shows this bootstrap
variance errs on the large side (it counts the cells' own noise more than once), so the pooled
interval is conservative.

The group-fairness spreads and the retrieval metrics keep the percentile interval (they are
never called); their simultaneous pairwise intervals at a Bonferroni level are drawn with at
least :data:`TAIL_REPLICATES` replicates in each tail (:meth:`IntervalSettings.at_level`).

The same seed gives the same interval, bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import stdtrit

from counterfactual_lab.config.audit_config import MAX_BOOTSTRAP_SAMPLES
from counterfactual_lab.metrics.schema import (
    INTERVAL_T,
    INTERVAL_WILSON,
    Estimate,
)

DEFAULT_SEED = 0
METHOD_CLUSTER_T = (
    "t interval with C - 1 degrees of freedom (C = source images) on the cluster-bootstrap standard error "
    "sd(replicates) * sqrt(C / (C - 1)), resampling source images"
)
METHOD_WILSON_EFFECTIVE = (
    "Wilson score interval at the effective sample size n_eff = min(n, p(1 - p) / se^2) with the t quantile "
    "(C - 1 degrees of freedom); n_eff = C, the number of source images, at 0/n and n/n"
)
METHOD_CLUSTER_PERCENTILE = "cluster percentile bootstrap (resampling source images)"
METHOD_CROSSED_T = (
    "t interval with C - 1 degrees of freedom on the standard error of a bootstrap resampling source images and "
    "phrasings independently (the pigeonhole bootstrap, Owen 2007), sd(replicates) * sqrt(C / (C - 1))"
)
# Replicates wanted in each tail of a percentile interval; fewer and the end is one or two draws.
TAIL_REPLICATES = 10
# The most resamples an interval at a far-out level is drawn with (the config's own bound).
MAX_RESAMPLES = MAX_BOOTSTRAP_SAMPLES
# Float64 cells of one block of a computation over resamples: a block of b resamples of a statistic
# that holds `cells_per_resample` numbers per resample (C counts for a sum; N·G prefix shares for a
# ranking of N items in G groups) has b·cells_per_resample ≤ _CHUNK_CELLS, i.e. 32 MiB per array.
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
        """From an :class:`~counterfactual_lab.config.audit_config.AuditSection`."""
        return cls(audit.bootstrap_samples, audit.confidence, getattr(audit, "bootstrap_seed", DEFAULT_SEED))

    def at_level(self, level: float) -> "IntervalSettings":
        """These settings with enough resamples for a percentile interval at ``level`` (module doc)."""
        return replace(self, n_resamples=max(self.n_resamples, resamples_for_level(level)))

    def tail_note(self, level: float) -> str | None:
        """A note when an interval at ``level`` has fewer than TAIL_REPLICATES replicates in a tail."""
        tail = self.n_resamples * (1.0 - level) / 2.0
        if tail >= TAIL_REPLICATES - 1e-9:
            return None
        return (f"the {percent_level(level)} interval rests on about {tail:.1f} replicates in each tail "
                f"({self.n_resamples} resamples, at most {MAX_RESAMPLES}): its ends are uncertain")


def percent_level(level: float) -> str:
    """An interval level as text with the digits that tell it from 100%: 0.95 -> '95%',
    1 − 0.05/70 -> '99.93%', 1 − 0.05/1000 -> '99.995%'."""
    decimals = max(0, math.ceil(-math.log10(1.0 - level) - 1e-9) - 2)
    return f"{100 * level:.{decimals}f}%"


def bonferroni_level(confidence: float, comparisons: int) -> float:
    """1 − (1 − confidence)/m: m intervals at this level all hold at once with probability ≥ confidence."""
    if comparisons < 1:
        raise ValueError(f"a family needs at least one comparison, got {comparisons}")
    return 1.0 - (1.0 - confidence) / comparisons


def resamples_for_level(level: float) -> int:
    """⌈2·TAIL_REPLICATES/(1 − level)⌉ resamples (TAIL_REPLICATES in each tail), at most MAX_RESAMPLES."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return min(MAX_RESAMPLES, math.ceil(2 * TAIL_REPLICATES / (1.0 - level) - 1e-9))


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

    def count_blocks(self, cells_per_resample: int | None = None) -> Iterator[np.ndarray]:
        """Blocks of resample counts, ``(b, C)`` float arrays, in the same order on every call.

        ``cells_per_resample``: how many numbers the caller's computation holds per resample
        (default C, the counts themselves); a block has at most ``_CHUNK_CELLS`` of them over its
        resamples. The resamples are the same whatever the blocks (one seeded stream).
        """
        c, total, seed = self.n_clusters, self.settings.n_resamples, self.settings.seed
        cells = max(c, int(cells_per_resample or c))
        if total * cells <= _CHUNK_CELLS:  # one block: drawn once per (C, B, seed), shared by every metric
            yield _counts(c, total, seed)
            return
        rng = np.random.default_rng(seed)
        step = max(1, _CHUNK_CELLS // cells)
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


def t_quantile(df: float | np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """t_{df, (1 + level)/2}: the two-sided quantile of a t distribution at ``level`` (0 at level 0)."""
    return stdtrit(np.asarray(df, dtype=float), (1.0 + np.asarray(level, dtype=float)) / 2.0)


def t_bounds(value, se, n_sources, level) -> tuple[np.ndarray, np.ndarray]:
    """θ̂ ± t_{C−1,(1+ℓ)/2}·se, elementwise over arrays (or numbers)."""
    q = t_quantile(np.asarray(n_sources, dtype=float) - 1.0, level)
    spread = q * np.asarray(se, dtype=float)
    return np.asarray(value, dtype=float) - spread, np.asarray(value, dtype=float) + spread


def effective_n(value, se, n, n_sources) -> np.ndarray:
    """n_eff = min(n, p̂(1 − p̂)/se²); C (the source images) where p̂ is 0 or 1; n where se is 0 inside (0, 1)."""
    p, se, n, c = (np.asarray(x, dtype=float) for x in (value, se, n, n_sources))
    variance = p * (1.0 - p)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(se > 0, variance / np.where(se > 0, se * se, 1.0), np.inf)
    inside = np.minimum(n, ratio)
    return np.where((p <= 0.0) | (p >= 1.0), c, np.maximum(inside, 1.0))


def wilson_bounds(value, se, n, n_sources, level) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval at the effective sample size with the t quantile (module doc), elementwise."""
    p = np.clip(np.asarray(value, dtype=float), 0.0, 1.0)
    m = effective_n(p, se, n, n_sources)
    q = t_quantile(np.asarray(n_sources, dtype=float) - 1.0, level)
    centre = p + q * q / (2 * m)
    spread = q * np.sqrt(p * (1 - p) / m + q * q / (4 * m * m))
    denominator = 1 + q * q / m
    # At 0/n and n/n one end is exactly 0 or 1; computed, it would be off by a rounding error.
    low = np.where(p <= 0.0, 0.0, np.maximum(0.0, (centre - spread) / denominator))
    high = np.where(p >= 1.0, 1.0, np.minimum(1.0, (centre + spread) / denominator))
    return low, high


def interval_at(method, value, se, n, n_sources, level) -> tuple[np.ndarray, np.ndarray]:
    """A row's interval at ``level`` from the table alone (``interval_method``, ``value``, ``se``, ``n``,
    ``n_sources``), elementwise over arrays; NaN where the method is neither t nor Wilson."""
    methods = np.asarray(method, dtype=object)
    shape = np.broadcast(methods, np.asarray(value, dtype=float), np.asarray(level, dtype=float)).shape
    value, se, n, c, level = (np.broadcast_to(np.asarray(x, dtype=float), shape) for x in (value, se, n, n_sources, level))
    methods = np.broadcast_to(methods, shape)
    t_low, t_high = t_bounds(value, se, c, level)
    w_low, w_high = wilson_bounds(value, se, n, c, level)
    wilson = methods == INTERVAL_WILSON
    t = methods == INTERVAL_T
    low = np.where(wilson, w_low, np.where(t, t_low, np.nan))
    high = np.where(wilson, w_high, np.where(t, t_high, np.nan))
    return low, high


def cluster_se(replicates: np.ndarray, n_clusters: int) -> np.ndarray:
    """sd_b(θ*_b)·sqrt(C/(C − 1)) per column of the (B, k) replicates; NaN for fewer than 2 clusters."""
    values = np.asarray(replicates, dtype=float)
    if n_clusters < 2 or values.shape[0] < 2:
        return np.full(values.shape[1:] if values.ndim > 1 else (), np.nan)
    se = values.std(axis=0, ddof=1) * math.sqrt(n_clusters / (n_clusters - 1))
    # Every source alike: the replicates differ by rounding alone, and the se is exactly 0.
    scale = np.maximum(1.0, np.abs(values).max(axis=0))
    return np.where(se <= 1e-12 * scale, 0.0, se)


_ONE_SOURCE = "one source image: no interval (a t interval needs at least two)"


def mean_estimates(columns: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> list[Estimate]:
    """The mean of each column of ``columns`` (n rows × k) with its cluster-bootstrap t interval.

    Each replicate is the resample's Σ values / number of rows (a ratio of resampled cluster
    totals); all k columns share one set of resamples, drawn once. The interval is
    θ̂ ± t_{C−1}·se at ``settings.confidence`` (module doc). An empty sample is undefined; a
    sample from one source has a value and no interval.
    """
    values = np.asarray(columns, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"columns must be a 2-d array (rows × columns), got shape {values.shape}")
    codes, c = cluster_codes(clusters)
    if values.shape[0] == 0:
        return [Estimate.undefined("no rows to average") for _ in range(values.shape[1])]
    if values.shape[0] != codes.size:
        raise ValueError(f"{values.shape[0]} values but {codes.size} cluster ids")
    if not np.isfinite(values).all():
        raise ValueError("values to average must be finite (drop rows without a score first)")
    means = values.mean(axis=0)
    n = int(values.shape[0])
    if c < 2:
        return [Estimate(float(v), None, None, n, c, None, _ONE_SOURCE, None, None) for v in means]
    per_cluster = np.column_stack([np.bincount(codes, weights=v, minlength=c) for v in values.T]
                                  + [np.bincount(codes, minlength=c).astype(float)])
    totals = ClusterBootstrap(c, settings).sums(per_cluster)
    # Every cluster has a row, so every resample has rows: no replicate is undefined.
    replicates = totals[:, :-1] / totals[:, -1:]
    se = cluster_se(replicates, c)
    low, high = t_bounds(means, se, c, settings.confidence)
    return [Estimate(float(means[j]), float(low[j]), float(high[j]), n, c, 0, None, float(se[j]), INTERVAL_T)
            for j in range(values.shape[1])]


def crossed_mean_estimates(columns: np.ndarray, clusters: Sequence[Any] | np.ndarray, phrasings: Sequence[Any] | np.ndarray,
                           settings: IntervalSettings) -> list[Estimate]:
    """The mean of each column of ``columns`` (n rows × k) with a t interval on the bootstrap that
    resamples clusters and phrasings independently (module doc); one phrasing: :func:`mean_estimates`."""
    values = np.asarray(columns, dtype=float)
    codes, c = cluster_codes(clusters)
    phrasing_codes, k = cluster_codes(phrasings)
    if k <= 1 or values.shape[0] == 0:
        return mean_estimates(values, clusters, settings)
    if values.ndim != 2 or values.shape[0] != codes.size or codes.size != phrasing_codes.size:
        raise ValueError(f"values {values.shape}, {codes.size} cluster ids and {phrasing_codes.size} phrasings must agree")
    if not np.isfinite(values).all():
        raise ValueError("values to average must be finite (drop rows without a score first)")
    means = values.mean(axis=0)
    n, width = int(values.shape[0]), values.shape[1]
    if c < 2:
        return [Estimate(float(v), None, None, n, c, None, _ONE_SOURCE, None, None) for v in means]
    cell = codes * k + phrasing_codes
    sums = np.column_stack([np.bincount(cell, weights=v, minlength=c * k) for v in values.T]
                           + [np.bincount(cell, minlength=c * k).astype(float)]).reshape(c, k * (width + 1))
    rng = np.random.default_rng([settings.seed, 1])  # the phrasings' draws, apart from the sources' stream
    blocks = []
    for source_counts in ClusterBootstrap(c, settings).count_blocks(c * k):
        phrasing_counts = _draw(rng, k, source_counts.shape[0])
        per_phrasing = (source_counts @ sums).reshape(-1, k, width + 1)
        blocks.append(np.einsum("bkj,bk->bj", per_phrasing, phrasing_counts))
    totals = np.concatenate(blocks, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = totals[:, :-1] / totals[:, -1:]
    finite = np.isfinite(replicates).all(axis=1)
    skipped = int((~finite).sum())
    se = cluster_se(replicates[finite], c)
    low, high = t_bounds(means, se, c, settings.confidence)
    return [Estimate(float(means[j]), float(low[j]), float(high[j]), n, c, skipped, None, float(se[j]), INTERVAL_T)
            for j in range(width)]


def mean_estimate(values: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Mean of ``values`` with its cluster-bootstrap t interval (:func:`mean_estimates`)."""
    return mean_estimates(np.asarray(values, dtype=float).reshape(-1, 1), clusters, settings)[0]


def as_proportion(estimate: Estimate, settings: IntervalSettings) -> Estimate:
    """A proportion's estimate (a mean of 0/1 flags) with Wilson's interval at the effective sample
    size in place of the t interval (module doc); unchanged without an interval."""
    if estimate.value is None or estimate.se is None or estimate.low is None:
        return estimate
    low, high = wilson_bounds(estimate.value, estimate.se, estimate.n, estimate.n_sources, settings.confidence)
    return replace(estimate, low=float(low), high=float(high), method=INTERVAL_WILSON)


def proportion_estimate(successes: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Share of true ``successes`` with Wilson's interval at the effective sample size (:func:`as_proportion`)."""
    hits = np.asarray(successes, dtype=bool)
    return as_proportion(mean_estimate(hits.astype(float), clusters, settings), settings)
