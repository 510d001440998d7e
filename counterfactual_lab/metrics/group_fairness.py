"""Group fairness of the predicted labels: selection rate, demographic parity, equalized odds.

One-vs-rest per audit label: ŷ = 1[top1 = label], and where the pool has ground truth
y = 1[true label = label]. Over the groups g of an attribute that have at least
``min_group_size`` images (smaller groups are left out and named in the note):

* ``selection_rate``                = P(ŷ = 1 | g), per group;
* ``demographic_parity_difference`` = max_g P(ŷ=1 | g) − min_g P(ŷ=1 | g);
* ``demographic_parity_ratio``      = min_g P(ŷ=1 | g) / max_g P(ŷ=1 | g) (undefined when no group
  is ever given the label);
* ``equalized_odds_difference``     = max(max_g TPR_g − min_g TPR_g, max_g FPR_g − min_g FPR_g),
  TPR_g = P(ŷ=1 | y=1, g), FPR_g = P(ŷ=1 | y=0, g).

These are fairlearn's definitions (``selection_rate``, ``demographic_parity_difference/_ratio``,
``equalized_odds_difference`` with ``agg="worst_case"``) except where fairlearn returns a
number for an undefined quantity: a group without positives has no TPR (fairlearn, through
scikit-learn's confusion matrix, uses 0 and reports a gap of 1.0 for a model that answers
every group the same), so equalized odds is undefined there — a null value with a note. Parity
with fewer than two groups is undefined too. Tests check the values equal fairlearn's wherever
both are defined.

Intervals: cluster bootstrap by source. The per-group counts of each source are summed with the
resample's counts, so one resample costs a matrix product, not a fairlearn ``MetricFrame``;
resamples where a group is missing (or has no positives / negatives) are skipped and counted.
Selection rates are proportions (:func:`~counterfactual_lab.metrics.intervals.proportion_estimate`).
The parity and equalized-odds differences are spreads (max − min ≥ 0), whose own percentile
interval would exclude 0 whenever anything varies; their intervals come from simultaneous
intervals of the signed pairwise differences (:func:`spread_interval`), and the ratio's
(≤ 1, biased the same way at parity) from the signed pairwise log ratios (:func:`ratio_interval`).
Those pairwise intervals are at the Bonferroni level 1 − (1 − c)/m for the m pairs of groups
(m = 21 for 7 groups, 42 TPR and FPR pairs for equalized odds), whose tails a thousand resamples
barely reach: they are drawn with enough resamples for TAIL_REPLICATES replicates in each tail
(:meth:`~counterfactual_lab.metrics.intervals.IntervalSettings.at_level`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.metrics.intervals import (
    ClusterBootstrap,
    IntervalSettings,
    bonferroni_level,
    cluster_codes,
    percentile_interval,
    proportion_estimate,
)
from counterfactual_lab.metrics.schema import Estimate, metric_row

SELECTION_RATE = "selection_rate"
PARITY_DIFFERENCE = "demographic_parity_difference"
PARITY_RATIO = "demographic_parity_ratio"
EQUALIZED_ODDS = "equalized_odds_difference"

METHOD_PAIRWISE_SPREAD = (
    "simultaneous pairwise spread: percentile intervals of the signed pairwise differences of the group rates "
    "at the Bonferroni level 1 - (1 - confidence)/pairs, combined into an interval for max - min "
    "(cluster bootstrap by source; equalized odds over the TPR and FPR pairs together)"
)
METHOD_PAIRWISE_LOG_RATIO = (
    "simultaneous pairwise log ratio: percentile intervals of ln(r_g / r_h) for each pair of groups at the "
    "Bonferroni level 1 - (1 - confidence)/pairs, combined into an interval for min / max "
    "(cluster bootstrap by source)"
)


def pairwise_settings(settings: IntervalSettings, pairs: int) -> IntervalSettings:
    """``settings`` with enough resamples for the Bonferroni level over ``pairs`` pairwise intervals."""
    return settings.at_level(bonferroni_level(settings.confidence, max(1, pairs)))


def split_small_groups(groups: pl.Series, min_group_size: int) -> tuple[list[str], str | None]:
    """(groups with at least ``min_group_size`` rows, sorted; a note naming the ones left out)."""
    counts = groups.drop_nulls().value_counts(sort=False)
    name = counts.columns[0]
    sizes = dict(zip(counts[name].to_list(), counts["count"].to_list()))
    kept = sorted(g for g, n in sizes.items() if n >= min_group_size)
    small = sorted((g, n) for g, n in sizes.items() if n < min_group_size)
    if not small:
        return kept, None
    listed = ", ".join(f"{g} ({n})" for g, n in small)
    return kept, f"left out, fewer than min_group_size={min_group_size} images: {listed}"


def _per_cluster_group(cluster: np.ndarray, group: np.ndarray, n_clusters: int, n_groups: int, values: np.ndarray) -> np.ndarray:
    """(C, G) sums of ``values`` per (cluster, group)."""
    flat = cluster * n_groups + group
    return np.bincount(flat, weights=values.astype(float), minlength=n_clusters * n_groups).reshape(n_clusters, n_groups)


def _spread(rates: np.ndarray) -> np.ndarray:
    """max_g − min_g along the last axis; NaN where any group is NaN (undefined)."""
    return rates.max(axis=-1) - rates.min(axis=-1)


def _rates(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def spread_interval(replicates: list[np.ndarray], confidence: float) -> tuple[float, float, int]:
    """An interval for a spread max_g r_g − min_g r_g (≥ 0) from bootstrap replicates of the rates.

    The percentile interval of the spread's own replicates is biased at 0: any noise makes
    max − min positive, so with equal rates it excludes 0, the true value. Instead, for each
    pair of groups take the percentile interval [lo, hi] of the *signed* difference r_g − r_h,
    at level 1 − α/m for the m pairs (Bonferroni, so all hold at once with probability ≥ 1 − α);
    |r_g − r_h| then lies in [0 if lo ≤ 0 ≤ hi else min(|lo|, |hi|), max(|lo|, |hi|)], and the
    spread, the largest |r_g − r_h|, between the largest lower and the largest upper bound.

    ``replicates``: one (B, G) array per rate whose spread is taken (TPR and FPR for
    equalized odds, which is the larger of the two spreads); NaN rows are undefined resamples.
    Returns (low, high, skipped resamples).
    """
    stacked = np.concatenate(replicates, axis=1)
    undefined = ~np.isfinite(stacked).all(axis=1)
    pairs = [(block, g, h) for block, rates in enumerate(replicates) for g in range(rates.shape[1]) for h in range(g + 1, rates.shape[1])]
    level = 1.0 - (1.0 - confidence) / len(pairs)
    lows, highs = [], []
    for block, g, h in pairs:
        rates = replicates[block][~undefined]
        lo, hi, _ = percentile_interval(rates[:, g] - rates[:, h], level)
        if lo is None:
            return None, None, int(undefined.sum())
        lows.append(0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi)))
        highs.append(max(abs(lo), abs(hi)))
    return max(lows), max(highs), int(undefined.sum())


def ratio_interval(replicates: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """An interval for the ratio min_g r_g / max_g r_g (≤ 1) from (B, G) bootstrap replicates of the rates.

    Like :func:`spread_interval`, on the signed pairwise scale: for each pair of groups the
    percentile interval, at level 1 − α/m (Bonferroni over the m pairs), of q = r_g / (r_g + r_h),
    mapped to λ = ln(r_g / r_h) = ln(q / (1 − q)) (±∞ when one rate is 0). Then
    |λ_gh| ∈ [0 if λ_lo ≤ 0 ≤ λ_hi else min(|λ_lo|, |λ_hi|), max(|λ_lo|, |λ_hi|)] and the ratio,
    exp(−max_gh |λ_gh|), lies in [exp(−max of the upper ends), exp(−max of the lower ends)].
    Resamples where a pair's rates are both 0 are skipped for that pair.
    """
    g = replicates.shape[1]
    m = g * (g - 1) // 2
    level = 1.0 - (1.0 - confidence) / m
    lows, highs = [], []
    for a in range(g):
        for b in range(a + 1, g):
            total = replicates[:, a] + replicates[:, b]
            with np.errstate(invalid="ignore", divide="ignore"):
                q = np.where(total > 0, replicates[:, a] / np.where(total > 0, total, 1.0), np.nan)
            q_lo, q_hi, _ = percentile_interval(q, level)
            if q_lo is None:
                return None, None
            with np.errstate(divide="ignore"):
                lam_lo, lam_hi = (float(np.log(x) - np.log1p(-x)) for x in (q_lo, q_hi))
            lows.append(0.0 if lam_lo <= 0.0 <= lam_hi else min(abs(lam_lo), abs(lam_hi)))
            highs.append(max(abs(lam_lo), abs(lam_hi)))
    return float(np.exp(-max(highs))), float(np.exp(-max(lows)))


def parity(y_pred: np.ndarray, groups: np.ndarray, clusters: np.ndarray, settings: IntervalSettings | None = None
           ) -> tuple[dict[str, float], Estimate, Estimate]:
    """(selection rate per group, parity difference, parity ratio) over the given rows.

    Every group present is compared (filter small groups first). With ``settings`` the
    difference carries the interval of :func:`spread_interval`, the ratio that of
    :func:`ratio_interval`.
    """
    names, g_codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    c_codes, c = cluster_codes(clusters)
    n, n_sources, g = len(y_pred), c, len(names)
    if g < 2:
        note = "fewer than two groups to compare"
        return {}, Estimate.undefined(note, n, n_sources), Estimate.undefined(note, n, n_sources)
    sizes = _per_cluster_group(c_codes, g_codes, c, g, np.ones(n))
    hits = _per_cluster_group(c_codes, g_codes, c, g, np.asarray(y_pred, dtype=float))
    rates = hits.sum(axis=0) / sizes.sum(axis=0)
    difference = float(_spread(rates))
    ratio = float(rates.min() / rates.max()) if rates.max() > 0 else None
    diff_ci, ratio_ci, skipped, note = (None, None), (None, None), None, None
    if settings is not None:
        pairs = g * (g - 1) // 2
        settings = pairwise_settings(settings, pairs)
        note = settings.tail_note(bonferroni_level(settings.confidence, pairs))
        totals = ClusterBootstrap(c, settings).sums(np.hstack([sizes, hits]))
        boot_rates = _rates(totals[:, g:], totals[:, :g])
        low, high, skipped = spread_interval([boot_rates], settings.confidence)
        diff_ci = (low, high)
        ratio_ci = ratio_interval(boot_rates, settings.confidence)
    by_group = {str(name): float(r) for name, r in zip(names, rates)}
    diff = Estimate(difference, diff_ci[0], diff_ci[1], n, n_sources, skipped, note)
    if ratio is None:
        ratio_estimate = Estimate.undefined("no group is ever given this label (0/0)", n, n_sources)
    else:
        ratio_estimate = Estimate(ratio, ratio_ci[0], ratio_ci[1], n, n_sources, skipped, note)
    return by_group, diff, ratio_estimate


def equalized_odds(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, clusters: np.ndarray,
                   settings: IntervalSettings | None = None) -> Estimate:
    """Equalized odds difference over the given rows; undefined (with the reason) when a group
    has no positives (no TPR) or no negatives (no FPR), or there are fewer than two groups.
    The interval is :func:`spread_interval` over the TPR and FPR replicates."""
    names, g_codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    c_codes, c = cluster_codes(clusters)
    n = len(y_true)
    if len(names) < 2:
        return Estimate.undefined("fewer than two groups to compare", n, c)
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    g = len(names)
    parts = [
        _per_cluster_group(c_codes, g_codes, c, g, y_true),  # positives
        _per_cluster_group(c_codes, g_codes, c, g, y_true & y_pred),  # true positives
        _per_cluster_group(c_codes, g_codes, c, g, ~y_true),  # negatives
        _per_cluster_group(c_codes, g_codes, c, g, ~y_true & y_pred),  # false positives
    ]
    positives, true_pos, negatives, false_pos = (p.sum(axis=0) for p in parts)
    reasons = [f"group {names[i]} has no positives (TPR undefined)" for i in np.flatnonzero(positives == 0)]
    reasons += [f"group {names[i]} has no negatives (FPR undefined)" for i in np.flatnonzero(negatives == 0)]
    if reasons:
        return Estimate.undefined("; ".join(reasons), n, c)
    value = float(max(_spread(true_pos / positives), _spread(false_pos / negatives)))
    if settings is None:
        return Estimate(value, None, None, n, c)
    pairs = 2 * (g * (g - 1) // 2)  # TPR pairs and FPR pairs
    settings = pairwise_settings(settings, pairs)
    totals = ClusterBootstrap(c, settings).sums(np.hstack(parts))
    pos, tp, neg, fp = (totals[:, i * g:(i + 1) * g] for i in range(4))
    low, high, skipped = spread_interval([_rates(tp, pos), _rates(fp, neg)], settings.confidence)
    return Estimate(value, low, high, n, c, skipped, settings.tail_note(bonferroni_level(settings.confidence, pairs)))


def group_fairness_rows(
    pool: pl.DataFrame,
    attribute: str,
    stratum: str,
    labels: list[str],
    settings: IntervalSettings,
    min_group_size: int,
) -> list[dict[str, Any]]:
    """Selection rates, parity and (with ground truth) equalized odds of one stratum's pool of one attribute.

    ``pool``: rows with ``source_id, group, top1`` and optionally ``label`` (ground truth).
    """
    rows: list[dict[str, Any]] = []
    known = pool.filter(pl.col("group").is_not_null())
    kept, left_out = split_small_groups(known["group"], min_group_size)
    used = known.filter(pl.col("group").is_in(kept))
    groups, clusters = used["group"].to_numpy(), used["source_id"].to_numpy()
    for label in labels:
        y_pred = (used["top1"] == label).fill_null(False).to_numpy()
        for group in kept:
            member = groups == group
            estimate = proportion_estimate(y_pred[member], clusters[member], settings)
            rows.append(metric_row(SELECTION_RATE, stratum, attribute, estimate, group=group, label=label))
        if len(kept) < 2:
            why = f"fewer than two groups with at least min_group_size={min_group_size} images"
            diff = ratio = Estimate.undefined(why, used.height, used["source_id"].n_unique())
        else:
            _, diff, ratio = parity(y_pred, groups, clusters, settings)
        rows.append(metric_row(PARITY_DIFFERENCE, stratum, attribute, diff.with_note(left_out), label=label))
        rows.append(metric_row(PARITY_RATIO, stratum, attribute, ratio.with_note(left_out), label=label))
    if "label" in pool.columns and pool["label"].is_not_null().any():
        truth = known.filter(pl.col("label").is_not_null())
        t_kept, t_left_out = split_small_groups(truth["group"], min_group_size)
        truth = truth.filter(pl.col("group").is_in(t_kept))
        for label in labels:
            if len(t_kept) < 2:
                why = f"fewer than two groups with at least min_group_size={min_group_size} images with ground truth"
                estimate = Estimate.undefined(why, truth.height, truth["source_id"].n_unique())
            else:
                estimate = equalized_odds(
                    (truth["label"] == label).to_numpy(), (truth["top1"] == label).fill_null(False).to_numpy(),
                    truth["group"].to_numpy(), truth["source_id"].to_numpy(), settings,
                )
            rows.append(metric_row(EQUALIZED_ODDS, stratum, attribute, estimate.with_note(t_left_out), label=label))
    return rows
