"""Cohen's κ and Krippendorff's α, written here (the ``krippendorff`` package is GPL): checked on a
published example, on hand-computed cases, and where they are undefined."""

from __future__ import annotations

import numpy as np
import pytest

from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.review.agreement import alpha_estimate, cohen_kappa, kappa_estimate, krippendorff_alpha

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the nominal example:
# 4 observers × 12 units with missing answers; α = 0.743.
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def test_alpha_reproduces_krippendorffs_worked_example():
    assert krippendorff_alpha(list(zip(*OBSERVERS))) == pytest.approx(0.743, abs=5e-4)


def test_alpha_is_one_for_full_agreement_and_undefined_for_one_category():
    assert krippendorff_alpha([["a", "a"], ["b", "b", "b"], ["a", None]]) == 1.0
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None, "no variation: D_e = 0"
    assert krippendorff_alpha([["a", None], [None, "b"]]) is None, "no unit with two answers"


def test_kappa_by_hand():
    # p_o = 4/5; p_e = 3/5·2/5 + 2/5·3/5 = 12/25; κ = (20/25 − 12/25)/(13/25) = 8/13
    assert cohen_kappa([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(8 / 13)
    assert cohen_kappa(list("abab"), list("abab")) == 1.0
    assert cohen_kappa(list("abab"), list("baba")) == pytest.approx(-1.0)


def test_kappa_is_undefined_where_a_rater_uses_one_category():
    """κ is then 0 or undefined by construction: it would say nothing about the raters."""
    assert cohen_kappa([1, 1, 1, 1], [1, 0, 1, 0]) is None
    assert cohen_kappa([1, 0, 1, 0], [0, 0, 0, 0]) is None


def test_intervals_bootstrap_whole_sources_and_are_reproducible():
    rng = np.random.default_rng(3)
    judge = rng.integers(0, 2, 60).tolist()
    people = [j if rng.random() < 0.8 else 1 - j for j in judge]
    sources = [f"s{i // 3}" for i in range(60)]
    settings = IntervalSettings(n_resamples=300, seed=1)
    first = kappa_estimate(judge, people, sources, settings, [0, 1], "undefined")
    assert first.value == pytest.approx(cohen_kappa(judge, people))
    assert first.low < first.value < first.high and first.n == 60 and first.n_sources == 20
    assert kappa_estimate(judge, people, sources, settings, [0, 1], "undefined") == first

    units = [[j, p] for j, p in zip(judge, people)]
    alpha = alpha_estimate(units, sources, settings, [0, 1], "undefined")
    assert alpha.value == pytest.approx(krippendorff_alpha(units))
    assert alpha.low < alpha.value < alpha.high


def test_an_undefined_statistic_carries_its_note():
    estimate = kappa_estimate([1, 1], [1, 0], ["a", "b"], IntervalSettings(50), [0, 1], "the judge passed everything")
    assert estimate.value is None and estimate.note == "the judge passed everything"
