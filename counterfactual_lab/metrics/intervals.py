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

**Levels that need more resamples.** An interval at level ℓ reads the (1 − ℓ)/2 tails of the
replicates; with B resamples a tail holds B·(1 − ℓ)/2 of them. Bonferroni levels
(ℓ = 1 − (1 − c)/m: the family-wise interval over a run's m callable comparisons, the pairwise
intervals behind the parity and equalized-odds spreads) push the tails out, so such an interval
is drawn with at least :data:`TAIL_REPLICATES` replicates in each tail:
B' = max(B, ⌈2·TAIL_REPLICATES/(1 − ℓ)⌉) = max(B, ⌈20·m/(1 − c)⌉) resamples
(:meth:`IntervalSettings.at_level`), at most :data:`MAX_RESAMPLES`; beyond that the interval
says in its note how few replicates its tails hold. The first B resamples are the same whatever
B' is (the draws are one seeded stream), so raising B' only adds resamples.

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

from counterfactual_lab.config.audit_config import MAX_BOOTSTRAP_SAMPLES
from counterfactual_lab.metrics.schema import Estimate

DEFAULT_SEED = 0
METHOD_CLUSTER_PERCENTILE = "cluster percentile bootstrap (resampling source images)"
METHOD_WILSON_AT_SOURCES = "Wilson score interval with n = number of source images (proportions at 0/n or n/n)"
METHOD_FAMILY_WISE = (
    "Bonferroni over the m comparisons a run can call: each callable row and its control also carry the "
    "interval at level 1 - (1 - confidence)/m from the same replicates (ci_low_adjusted, ci_high_adjusted), "
    "and a difference is called on those"
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
    # m: estimates also get the interval at 1 − (1 − confidence)/m (the family-wise level); None: not.
    comparisons: int | None = None

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.comparisons is not None and self.comparisons < 1:
            raise ValueError(f"comparisons must be at least 1, got {self.comparisons}")

    @classmethod
    def from_audit(cls, audit: Any) -> "IntervalSettings":
        """From an :class:`~counterfactual_lab.config.audit_config.AuditSection`."""
        return cls(audit.bootstrap_samples, audit.confidence, getattr(audit, "bootstrap_seed", DEFAULT_SEED))

    @property
    def confidence_adjusted(self) -> float | None:
        """1 − (1 − confidence)/m for m = ``comparisons`` (Bonferroni); None without a family."""
        return None if self.comparisons is None else bonferroni_level(self.confidence, self.comparisons)

    def at_level(self, level: float) -> "IntervalSettings":
        """These settings with enough resamples for a percentile interval at ``level`` (module doc)."""
        return replace(self, n_resamples=max(self.n_resamples, resamples_for_level(level)))

    def for_family(self, comparisons: int) -> "IntervalSettings":
        """Settings whose estimates also carry the family-wise interval over ``comparisons`` (m ≥ 1)."""
        family = replace(self, comparisons=max(1, int(comparisons)))
        return family.at_level(family.confidence_adjusted)

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


def mean_estimates(columns: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> list[Estimate]:
    """The mean of each column of ``columns`` (n rows × k) with its cluster-bootstrap percentile interval.

    Each replicate is the resample's Σ values / number of rows (a ratio of resampled cluster
    totals). All k columns share one set of resamples, drawn once. With ``settings.comparisons``
    each estimate also carries the family-wise interval from the same replicates. An empty
    sample is undefined.
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
    per_cluster = np.column_stack([np.bincount(codes, weights=v, minlength=c) for v in values.T]
                                  + [np.bincount(codes, minlength=c).astype(float)])
    totals = ClusterBootstrap(c, settings).sums(per_cluster)
    # Every cluster has a row, so every resample has rows: no replicate is undefined, and the
    # percentiles of all columns at both levels come from one pass over the replicates.
    replicates = totals[:, :-1] / totals[:, -1:]
    levels = [settings.confidence] + ([settings.confidence_adjusted] if settings.comparisons is not None else [])
    tails = [q for level in levels for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0)]
    ends = np.quantile(replicates, tails, axis=0)  # (2 per level, k)
    note = settings.tail_note(settings.confidence_adjusted) if settings.comparisons is not None else None
    out = []
    for j in range(values.shape[1]):
        family: dict[str, Any] = {}
        if len(levels) == 2:
            family = {"adjusted_low": float(ends[2, j]), "adjusted_high": float(ends[3, j]),
                      "confidence_adjusted": levels[1], "comparisons": settings.comparisons}
        out.append(Estimate(float(values[:, j].mean()), float(ends[0, j]), float(ends[1, j]), int(values.shape[0]), c, 0,
                            note, **family))
    return out


def mean_estimate(values: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Mean of ``values`` with a cluster-bootstrap percentile interval (:func:`mean_estimates`)."""
    return mean_estimates(np.asarray(values, dtype=float).reshape(-1, 1), clusters, settings)[0]


def at_the_edge(estimate: Estimate, settings: IntervalSettings) -> Estimate:
    """A proportion's estimate with Wilson's interval where it is 0/n or n/n (at every level it carries).

    At 0/n or n/n the interval is :func:`wilson_interval` with x/n = the estimate and n = the
    number of source images (clusters) behind the rows.
    """
    if estimate.value is None or 0.0 < estimate.value < 1.0:
        return estimate
    x, n = estimate.value * estimate.n_sources, estimate.n_sources
    low, high = wilson_interval(x, n, settings.confidence)
    fields: dict[str, Any] = {"low": low, "high": high}
    if estimate.confidence_adjusted is not None:
        fields["adjusted_low"], fields["adjusted_high"] = wilson_interval(x, n, estimate.confidence_adjusted)
    return replace(estimate, **fields)


def proportion_estimate(successes: np.ndarray, clusters: Sequence[Any] | np.ndarray, settings: IntervalSettings) -> Estimate:
    """Share of true ``successes``: cluster-bootstrap percentile interval, Wilson at 0/n and n/n (:func:`at_the_edge`)."""
    hits = np.asarray(successes, dtype=bool)
    return at_the_edge(mean_estimate(hits.astype(float), clusters, settings), settings)
