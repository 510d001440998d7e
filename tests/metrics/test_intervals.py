"""Intervals: Wilson by hand, the cluster bootstrap moves whole sources (its standard error is the
sources' own), the t interval at any level, and a seeded coverage simulation for every interval
method (a 95% interval covers the truth about 95% of the time and is wider than an 80% one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import stdtrit

from counterfactual_lab.metrics.group_fairness import equalized_odds, parity
from counterfactual_lab.metrics.intervals import (
    ClusterBootstrap,
    IntervalSettings,
    interval_at,
    mean_estimate,
    percentile_interval,
    proportion_estimate,
    wilson_interval,
)

SIMULATIONS = 300
RESAMPLES = 300


def test_wilson_interval_by_hand():
    # x = 3, n = 10, z = 1.959964: p = 0.3, z²/n = 0.384146
    # centre = 0.3 + 0.192073 = 0.492073; spread = z·sqrt(0.021 + 0.0096037) = 1.959964·0.174939 = 0.342874
    # (0.492073 ∓ 0.342874) / 1.384146 -> [0.107791, 0.603222]
    low, high = wilson_interval(3, 10, 0.95)
    assert (low, high) == (pytest.approx(0.107791, abs=1e-6), pytest.approx(0.603222, abs=1e-6))
    # 0/n and n/n are not points: [0, z²/(n + z²)] and its mirror.
    assert wilson_interval(0, 24, 0.95) == (0.0, pytest.approx(3.841459 / 27.841459))
    assert wilson_interval(7, 7, 0.95) == (pytest.approx(7 / (7 + 3.841459)), 1.0)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0, 0.95)


def _wilson_t(successes: int, n: int, df: int, level: float) -> tuple[float, float]:
    """Wilson's interval by hand with the t quantile of ``df`` degrees of freedom for z."""
    q = float(stdtrit(df, (1 + level) / 2))
    p = successes / n
    centre, spread = p + q * q / (2 * n), q * np.sqrt(p * (1 - p) / n + q * q / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + q * q / n)), min(1.0, (centre + spread) / (1 + q * q / n))


def test_a_proportion_at_the_edge_gets_wilson_at_the_number_of_sources():
    # 12 pairs from 4 sources, none flips: Wilson with n = 4 sources, not 12 rows, not [0, 0],
    # and the t quantile with 3 degrees of freedom for z.
    estimate = proportion_estimate(np.zeros(12, dtype=bool), np.repeat(["a", "b", "c", "d"], 3), IntervalSettings(200))
    assert (estimate.value, estimate.n, estimate.n_sources, estimate.method) == (0.0, 12, 4, "wilson")
    assert estimate.low == 0.0 and estimate.high == pytest.approx(_wilson_t(0, 4, 3, 0.95)[1])
    every = proportion_estimate(np.ones(5, dtype=bool), list("abcde"), IntervalSettings(200))
    assert every.high == 1.0 and every.low == pytest.approx(_wilson_t(5, 5, 4, 0.95)[0]) and every.low < 1.0
    # At any level, from the table's columns alone.
    low, high = interval_at("wilson", 0.0, 0.0, 12, 4, 1 - 0.05 / 15)
    assert (float(low), float(high)) == (0.0, pytest.approx(_wilson_t(0, 4, 3, 1 - 0.05 / 15)[1]))
    # Inside (0, 1): Wilson at the effective sample size p(1 − p)/se² (here the rows, 40 per 40 sources).
    inside = proportion_estimate(np.arange(40) % 4 == 0, np.arange(40), IntervalSettings(4000))
    assert inside.value == 0.25 and inside.low < 0.25 < inside.high and inside.high - 0.25 > 0.25 - inside.low


def test_a_source_with_many_rows_moves_together():
    # One source with 50 rows of 1, ten sources with one row of 0. Resampling sources, the big
    # source is missing from (10/11)^11 = 35% of resamples, whose mean is then exactly 0: the
    # standard error is large and the interval reaches below 0.5. Resampling rows independently
    # would give about [0.74, 0.91].
    values = np.concatenate([np.ones(50), np.zeros(10)])
    clusters = ["big"] * 50 + [f"small{i}" for i in range(10)]
    estimate = mean_estimate(values, clusters, IntervalSettings(1000, 0.95, 0))
    assert estimate.value == pytest.approx(50 / 60) and (estimate.n, estimate.n_sources) == (60, 11)
    assert estimate.low < 0.5 and estimate.high > 1.0 and estimate.se > 0.3
    # Every resample draws C sources; a row's weight is its source's count.
    blocks = list(ClusterBootstrap(11, IntervalSettings(1000, 0.95, 0)).count_blocks())
    counts = np.concatenate(blocks)
    assert counts.shape == (1000, 11) and (counts.sum(axis=1) == 11).all()
    assert (counts[:, 0] == 0).mean() == pytest.approx((10 / 11) ** 11, abs=0.05)


def test_the_standard_error_is_the_sources_not_the_rows():
    """10 sources × 20 identical rows: the cluster bootstrap's se is that of the 10 source values
    (sd/√10), not of 200 rows (sd/√200); a bootstrap resampling rows would give the latter."""
    rng = np.random.default_rng(3)
    source_values = rng.normal(0, 1, 10)
    values = np.repeat(source_values, 20)
    estimate = mean_estimate(values, np.repeat(np.arange(10), 20), IntervalSettings(4000, 0.95, 1))
    assert estimate.se == pytest.approx(source_values.std(ddof=1) / np.sqrt(10), rel=0.05)
    q = float(stdtrit(9, 0.975))
    assert (estimate.low, estimate.high) == (pytest.approx(estimate.value - q * estimate.se),
                                             pytest.approx(estimate.value + q * estimate.se))
    # One source: a value, no interval (a t interval needs two).
    alone = mean_estimate(np.ones(5), ["a"] * 5, IntervalSettings(200))
    assert alone.value == 1.0 and alone.low is None and alone.se is None and "one source image" in alone.note


def test_undefined_resamples_are_skipped_and_counted():
    low, high, skipped = percentile_interval(np.array([1.0, np.nan, 2.0, np.inf, 3.0]), 0.5)
    assert skipped == 2 and (low, high) == (1.5, 2.5)
    assert percentile_interval(np.array([np.nan]), 0.95) == (None, None, 1)


def _coverage(case, confidence: float) -> tuple[float, np.ndarray]:
    """(share of seeded simulations whose interval covers the truth, interval widths)."""
    covered, widths = [], []
    for i in range(SIMULATIONS):
        truth, low, high = case(np.random.default_rng(10_000 + i), IntervalSettings(RESAMPLES, confidence, i))
        covered.append(low <= truth <= high)
        widths.append(high - low)
    return float(np.mean(covered)), np.array(widths)


def _clustered_mean(rng, settings):
    # 40 sources with 1–5 rows each; a source effect makes its rows correlated.
    sizes = rng.integers(1, 6, 40)
    source = np.repeat(np.arange(40), sizes)
    values = rng.normal(0, 1, 40)[source] + rng.normal(0, 1, source.size)
    estimate = mean_estimate(values, source, settings)
    return 0.0, estimate.low, estimate.high


def _skewed_mean_12(rng, settings):
    # 12 sources with Exp(1) effects and 1–3 rows each: few clusters and skew.
    sizes = rng.integers(1, 4, 12)
    source = np.repeat(np.arange(12), sizes)
    values = rng.exponential(1.0, 12)[source]
    estimate = mean_estimate(values, source, settings)
    return 1.0, estimate.low, estimate.high


def _flip_rate_24(rng, settings):
    # 24 sources × 2 pairs, each source's flip probability ~ Beta(0.5, 4.5) (mean 0.1).
    source = np.repeat(np.arange(24), 2)
    p = rng.beta(0.5, 4.5, 24)[source]
    estimate = proportion_estimate(rng.random(48) < p, source, settings)
    return 0.1, estimate.low, estimate.high


def _rare_proportion(rng, settings):
    # 40 sources × 2 pairs, flip probability 0.03: 0/80 happens in ~9% of samples.
    source = np.repeat(np.arange(40), 2)
    estimate = proportion_estimate(rng.random(80) < 0.03, source, settings)
    return 0.03, estimate.low, estimate.high


def _parity_difference(rng, settings):
    # 60 balanced sets (one image per group); selection rates 0.31 and 0.52.
    groups = np.tile(["a", "b"], 60)
    y_pred = rng.random(120) < np.where(groups == "a", 0.31, 0.52)
    _, diff, _ = parity(y_pred, groups, np.repeat(np.arange(60), 2), settings)
    return 0.21, diff.low, diff.high


def _parity_ratio(rng, settings):
    groups = np.tile(["a", "b"], 60)
    y_pred = rng.random(120) < np.where(groups == "a", 0.31, 0.52)
    _, _, ratio = parity(y_pred, groups, np.repeat(np.arange(60), 2), settings)
    return 0.31 / 0.52, ratio.low, ratio.high


def _equalized_odds(rng, settings):
    # TPR 0.61 vs 0.83, FPR 0.2 in both groups: equalized odds 0.22.
    groups = np.tile(["a", "b"], 80)
    y_true = rng.random(160) < 0.5
    y_pred = rng.random(160) < np.where(y_true, np.where(groups == "a", 0.61, 0.83), 0.2)
    estimate = equalized_odds(y_true, y_pred, groups, np.repeat(np.arange(80), 2), settings)
    return 0.22, estimate.low, estimate.high


def _parity_difference_at_parity(rng, settings):
    # Equal selection rates (0.4): the difference is 0, the case the pairwise spread interval exists for
    # (the spread's own percentile interval would exclude 0 whenever anything varies).
    groups = np.tile(["a", "b"], 60)
    _, diff, _ = parity(rng.random(120) < 0.4, groups, np.repeat(np.arange(60), 2), settings)
    return 0.0, diff.low, diff.high


def _parity_ratio_at_parity(rng, settings):
    groups = np.tile(["a", "b"], 60)
    _, _, ratio = parity(rng.random(120) < 0.4, groups, np.repeat(np.arange(60), 2), settings)
    return 1.0, ratio.low, ratio.high


def _equalized_odds_at_parity(rng, settings):
    # TPR 0.7 and FPR 0.2 in both groups: equalized odds 0.
    groups = np.tile(["a", "b"], 80)
    y_true = rng.random(160) < 0.5
    y_pred = rng.random(160) < np.where(y_true, 0.7, 0.2)
    estimate = equalized_odds(y_true, y_pred, groups, np.repeat(np.arange(80), 2), settings)
    return 0.0, estimate.low, estimate.high


def _wilson(rng, settings):
    successes = int((rng.random(50) < 0.1).sum())
    low, high = wilson_interval(successes, 50, settings.confidence)
    return 0.1, low, high


# (case, coverage bounds at 95%, at 80%). Bounds are about ±3 standard errors of a coverage
# estimate from 300 simulations around what the method promises; the spread intervals are
# Bonferroni-simultaneous, hence conservative (at least nominal), and so is Wilson at the
# effective sample size for rare proportions. The skewed 12-cluster case is the measured 0.917
# (docs/metrics.md, "Intervals") ± 3 standard errors.
CASES = {
    "cluster t (mean)": (_clustered_mean, (0.91, 0.98), (0.72, 0.86)),
    "cluster t, 12 clusters, skewed": (_skewed_mean_12, (0.87, 0.97), (0.68, 0.86)),
    "proportion with Wilson at 0/n": (_rare_proportion, (0.93, 1.0), (0.75, 0.97)),
    "flip rate, Wilson at n_eff, 24 clusters, p 0.1": (_flip_rate_24, (0.93, 1.0), (0.72, 0.95)),
    "parity difference (pairwise spread)": (_parity_difference, (0.92, 0.99), (0.72, 0.88)),
    "parity ratio (pairwise log ratio)": (_parity_ratio, (0.92, 0.99), (0.72, 0.88)),
    "equalized odds (pairwise spread)": (_equalized_odds, (0.93, 1.0), (0.78, 0.96)),
    "parity difference at parity": (_parity_difference_at_parity, (0.92, 0.99), (0.72, 0.88)),
    "parity ratio at parity": (_parity_ratio_at_parity, (0.92, 0.99), (0.72, 0.88)),
    "equalized odds at parity": (_equalized_odds_at_parity, (0.93, 1.0), (0.78, 0.96)),
    "Wilson score": (_wilson, (0.92, 0.99), (0.72, 0.88)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_coverage_simulation(name):
    case, bounds95, bounds80 = CASES[name]
    coverage95, widths95 = _coverage(case, 0.95)
    coverage80, widths80 = _coverage(case, 0.80)
    assert bounds95[0] <= coverage95 <= bounds95[1], f"{name}: 95% interval covers {coverage95:.3f}"
    assert bounds80[0] <= coverage80 <= bounds80[1], f"{name}: 80% interval covers {coverage80:.3f}"
    assert (widths95 >= widths80 - 1e-12).all() and widths95.mean() > 1.2 * widths80.mean()


def test_pairwise_intervals_of_many_groups_get_enough_resamples_for_their_tails():
    # 7 groups: 21 pairs, each at 1 − 0.05/21, whose 0.12% tails hold about one of 1,000 replicates.
    # Ten in each tail need 20·21/0.05 = 8,400 resamples; equalized odds (TPR and FPR pairs) 16,800.
    from counterfactual_lab.metrics.group_fairness import pairwise_settings

    assert pairwise_settings(IntervalSettings(1000), 21).n_resamples == 8400
    assert pairwise_settings(IntervalSettings(1000), 42).n_resamples == 16800
    assert pairwise_settings(IntervalSettings(1000), 1).n_resamples == 1000  # two groups: 400 would do
    assert pairwise_settings(IntervalSettings(20_000), 21).n_resamples == 20_000


def test_blocks_of_resamples_are_one_stream():
    # However the resamples are cut into blocks (by memory), they are the same resamples.
    import counterfactual_lab.metrics.intervals as intervals

    bootstrap = ClusterBootstrap(13, IntervalSettings(500, 0.95, 4))
    whole = np.concatenate(list(bootstrap.count_blocks()))
    small = np.concatenate(list(bootstrap.count_blocks(cells_per_resample=intervals._CHUNK_CELLS // 7)))
    assert whole.shape == small.shape == (500, 13) and (whole == small).all()
    # Raising the count only adds resamples: the first 500 of 2,000 are these.
    more = np.concatenate(list(ClusterBootstrap(13, IntervalSettings(2000, 0.95, 4)).count_blocks()))
    assert (more[:500] == whole).all()
