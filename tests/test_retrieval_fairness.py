"""MaxSkew@K, MinSkew@K and NDKL on a ranked list worked out by hand."""

from __future__ import annotations

import math

import pytest

from counterfactual_lab.retrieval_fairness import max_min_skew_at_k, ndkl, rank_groups, skew_at_k

# Pool of 6, ranked best first: f f m f m m  ->  p_pool(f) = p_pool(m) = 1/2.
RANKED = ["f", "f", "m", "f", "m", "m"]


def test_skew_at_k_by_hand():
    # K = 3: top 3 = f f m -> p_top(f) = 2/3, p_top(m) = 1/3.
    # Skew_f = ln((2/3)/(1/2)) = ln(4/3) ≈ 0.28768; Skew_m = ln((1/3)/(1/2)) = ln(2/3) ≈ -0.40547.
    skews = skew_at_k(RANKED, 3, epsilon=0.0)
    assert skews["f"] == pytest.approx(math.log(4 / 3))
    assert skews["m"] == pytest.approx(math.log(2 / 3))
    assert max_min_skew_at_k(RANKED, 3, epsilon=0.0) == (pytest.approx(math.log(4 / 3)), pytest.approx(math.log(2 / 3)))


def test_skew_is_zero_when_the_top_k_matches_the_pool():
    # K = 2 would be f f (skewed); K = 6 is the whole pool, so every skew is ln(1) = 0.
    assert skew_at_k(RANKED, 6, epsilon=0.0) == {"f": pytest.approx(0.0), "m": pytest.approx(0.0)}


def test_absent_group_gets_a_finite_smoothed_skew():
    # K = 2: top = f f, m absent -> Skew_m = ln((0 + ε)/(1/2 + ε)), finite thanks to ε.
    eps = 1e-4
    skews = skew_at_k(RANKED, 2, epsilon=eps)
    assert skews["m"] == pytest.approx(math.log(eps / (0.5 + eps)))
    assert skews["f"] == pytest.approx(math.log((1 + eps) / (0.5 + eps)))


def test_k_larger_than_the_pool_is_capped():
    assert skew_at_k(RANKED, 100, epsilon=0.0) == skew_at_k(RANKED, 6, epsilon=0.0)


def test_ndkl_by_hand():
    # Pool D = (f 1/2, m 1/2). K = 3, prefixes:
    #   i=1: f       -> P = (1, 0)     KL = 1·ln(1/0.5)                  = ln 2          ≈ 0.693147
    #   i=2: f f     -> P = (1, 0)     KL = ln 2                                         ≈ 0.693147
    #   i=3: f f m   -> P = (2/3, 1/3) KL = 2/3·ln(4/3) + 1/3·ln(2/3)                    ≈ 0.056633
    # discounts 1/log2(i+1): 1, 1/log2 3 ≈ 0.630930, 1/log2 4 = 0.5 ; Z ≈ 2.130930
    # NDKL = (0.693147 + 0.437327 + 0.028317) / 2.130930 = 1.158791 / 2.130930 ≈ 0.543796
    kl1 = math.log(2)
    kl3 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    d = [1.0, 1 / math.log2(3), 0.5]
    expected = (kl1 * d[0] + kl1 * d[1] + kl3 * d[2]) / sum(d)
    assert expected == pytest.approx(0.543796, abs=1e-6)
    assert ndkl(RANKED, 3) == pytest.approx(expected)


def test_ndkl_is_zero_for_a_perfectly_interleaved_ranking_prefix_by_prefix_only_when_balanced():
    # Three groups, pool shares 1/3 each; a ranking a b c a b c has a balanced prefix at i=3
    # but not at i=1, so NDKL > 0, and it is smaller than for the grouped ranking a a b b c c.
    interleaved = ["a", "b", "c", "a", "b", "c"]
    grouped = ["a", "a", "b", "b", "c", "c"]
    assert 0 < ndkl(interleaved, 6) < ndkl(grouped, 6)


def test_rank_groups_orders_by_descending_score_and_is_stable():
    assert rank_groups([0.1, 0.9, 0.5, 0.9], ["a", "b", "c", "d"]) == ["b", "d", "c", "a"]


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="empty"):
        skew_at_k([], 3)
    with pytest.raises(ValueError, match="K must be at least 1"):
        ndkl(RANKED, 0)
