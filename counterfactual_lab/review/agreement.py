"""Agreement between raters: Cohen's κ (two raters) and Krippendorff's α (any number), nominal.

**Cohen's κ** (Cohen 1960) of two raters who each put the same n items into categories:

    κ = (p_o − p_e) / (1 − p_e),   p_o = share of items they agree on,
                                   p_e = Σ_k p₁(k)·p₂(k), the agreement expected by chance

(p_r(k): the share of items rater r put in category k). κ = 1 is full agreement, 0 what chance
gives. It is undefined (None) where p_e = 1, and where either rater used one category only: κ
is then 0 or undefined by construction and says nothing about the raters.

**Krippendorff's α**, nominal (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"),
for any number of raters with missing answers. Over the units with at least two answers
(m_u answers in unit u), the coincidence matrix

    o_ck = Σ_u (number of ordered pairs of answers (c, k) in u, from different raters) / (m_u − 1),

n_c = Σ_k o_ck, n = Σ_c n_c, and

    α = 1 − D_o / D_e,   D_o = (n − Σ_c o_cc) / n,   D_e = (n² − Σ_c n_c²) / (n (n − 1)).

α = 1 is full agreement, 0 what chance gives; undefined (None) where D_e = 0 (one category
only) or fewer than two pairable answers. Checked against Krippendorff's own worked example
(4 raters × 12 units with missing answers: α = 0.743).

Both intervals are cluster-bootstrap percentile intervals (the project's
:mod:`~counterfactual_lab.metrics.intervals`): each resample draws source images with
replacement, the statistic is recomputed from resampled totals, and resamples where it is
undefined are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from counterfactual_lab.metrics.intervals import ClusterBootstrap, IntervalSettings, cluster_codes, percentile_interval
from counterfactual_lab.metrics.schema import Estimate


def kappa_from_counts(counts: np.ndarray) -> np.ndarray:
    """κ of (…, K, K) confusion counts (rater 1's category × rater 2's); NaN where undefined."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_o = np.trace(counts, axis1=-2, axis2=-1) / n
        first, second = counts.sum(axis=-1) / n[..., None], counts.sum(axis=-2) / n[..., None]
        p_e = (first * second).sum(axis=-1)
        kappa = (p_o - p_e) / (1.0 - p_e)
        constant = (first.max(axis=-1) >= 1.0 - 1e-12) | (second.max(axis=-1) >= 1.0 - 1e-12)
    return np.where(constant | (n <= 0) | (p_e >= 1.0 - 1e-12), np.nan, kappa)


def confusion_counts(first: Sequence[Any], second: Sequence[Any], categories: Sequence[Any]) -> np.ndarray:
    """K × K counts of (first's category, second's category)."""
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(categories), len(categories)))
    for a, b in zip(first, second, strict=True):
        counts[index[a], index[b]] += 1
    return counts


def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float | None:
    """Cohen's κ of two raters' categories of the same items (module docstring); None where undefined."""
    categories = sorted(set(first) | set(second), key=str)
    if not categories:
        return None
    value = float(kappa_from_counts(confusion_counts(first, second, categories)))
    return None if np.isnan(value) else value


def coincidences(unit: Sequence[Any], categories: Sequence[Any]) -> np.ndarray:
    """One unit's K × K coincidence counts (module docstring); zeros for a unit of fewer than two answers."""
    index = {c: i for i, c in enumerate(categories)}
    answers = [a for a in unit if a is not None]
    counts = np.bincount([index[a] for a in answers], minlength=len(categories)).astype(float)
    if len(answers) < 2:
        return np.zeros((len(categories), len(categories)))
    return (np.outer(counts, counts) - np.diag(counts)) / (len(answers) - 1)


def alpha_from_coincidences(o: np.ndarray) -> np.ndarray:
    """Nominal α of (…, K, K) coincidence matrices; NaN where undefined."""
    o = np.asarray(o, dtype=float)
    n_c = o.sum(axis=-1)
    n = n_c.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_o = (n - np.trace(o, axis1=-2, axis2=-1)) / n
        d_e = (n * n - (n_c ** 2).sum(axis=-1)) / (n * (n - 1.0))
        alpha = 1.0 - d_o / d_e
    return np.where((n <= 1.0) | (d_e <= 1e-12), np.nan, alpha)


def krippendorff_alpha(units: Sequence[Sequence[Any]]) -> float | None:
    """Nominal α of ``units`` (each: the raters' answers on one item, None for no answer); None where undefined."""
    categories = sorted({a for unit in units for a in unit if a is not None}, key=str)
    if not categories:
        return None
    o = sum((coincidences(u, categories) for u in units), np.zeros((len(categories), len(categories))))
    value = float(alpha_from_coincidences(o))
    return None if np.isnan(value) else value


def _bootstrap(per_item: np.ndarray, clusters: Sequence[Any], statistic, settings: IntervalSettings,
               value: float | None, note: str | None) -> Estimate:
    """``value`` with the percentile interval of ``statistic`` over cluster-resampled sums of ``per_item`` (n × K × K)."""
    codes, c = cluster_codes(clusters)
    n = int(per_item.shape[0])
    if value is None:
        return Estimate.undefined(note or "undefined", n=n, n_sources=c)
    k = per_item.shape[-1]
    per_cluster = np.zeros((c, k * k))
    np.add.at(per_cluster, codes, per_item.reshape(n, k * k))
    replicates = statistic(ClusterBootstrap(c, settings).sums(per_cluster).reshape(-1, k, k))
    low, high, skipped = percentile_interval(replicates, settings.confidence)
    return Estimate(value, low, high, n, c, skipped, note)


def kappa_estimate(first: Sequence[Any], second: Sequence[Any], clusters: Sequence[Any], settings: IntervalSettings,
                   categories: Sequence[Any], undefined_note: str) -> Estimate:
    """κ of two raters with its cluster-bootstrap interval; undefined (with ``undefined_note``) where κ is."""
    per_item = np.stack([confusion_counts([a], [b], categories) for a, b in zip(first, second, strict=True)]) \
        if len(first) else np.zeros((0, len(categories), len(categories)))
    value = float(kappa_from_counts(per_item.sum(axis=0))) if len(first) else float("nan")
    return _bootstrap(per_item, clusters, kappa_from_counts, settings,
                      None if np.isnan(value) else value, None if not np.isnan(value) else undefined_note)


def alpha_estimate(units: Sequence[Sequence[Any]], clusters: Sequence[Any], settings: IntervalSettings,
                   categories: Sequence[Any], undefined_note: str) -> Estimate:
    """Nominal α of ``units`` with its cluster-bootstrap interval; undefined (with ``undefined_note``) where α is."""
    per_item = np.stack([coincidences(u, categories) for u in units]) if len(units) \
        else np.zeros((0, len(categories), len(categories)))
    value = float(alpha_from_coincidences(per_item.sum(axis=0))) if len(units) and categories else float("nan")
    return _bootstrap(per_item, clusters, alpha_from_coincidences, settings,
                      None if np.isnan(value) else value, None if not np.isnan(value) else undefined_note)
