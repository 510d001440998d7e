"""The error control: Holm's step-down and Benjamini–Hochberg by hand, and decisions that agree
with the intervals they are shown at, whatever the rows' kinds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import METRICS_SCHEMA
from counterfactual_lab.metrics.error_control import apply_error_control, benjamini_hochberg, holm, min_effect_for
from counterfactual_lab.metrics.intervals import interval_at


def test_holm_rejects_what_bonferroni_would_not():
    rejected, adjusted, levels = holm(np.array([0.0001, 0.03]), 0.05)
    # Bonferroni rejects only the first (0.03 > 0.05/2); Holm's second step compares it with 0.05/1.
    assert rejected.tolist() == [True, True]
    assert levels.tolist() == pytest.approx([1 - 0.025, 1 - 0.05])
    assert adjusted.tolist() == pytest.approx([0.0002, 0.03])
    # Stops at the first failure: every later row is decided at the level that stopped.
    rejected, adjusted, levels = holm(np.array([0.2, 0.001, 0.02, 0.04]), 0.05)
    assert rejected.tolist() == [False, True, False, False]  # 0.02 > 0.05/3
    assert levels.tolist() == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 4, 1 - 0.05 / 3, 1 - 0.05 / 3])
    assert adjusted.tolist() == pytest.approx([0.2, 0.004, 0.06, 0.08])


def test_benjamini_hochberg_rejects_up_to_the_last_p_under_its_line():
    p = np.array([0.001, 0.008, 0.029, 0.039, 0.2])
    rejected, adjusted, levels = benjamini_hochberg(p, 0.05)
    assert rejected.tolist() == [True, True, True, True, False]  # R = 4: 0.039 ≤ 4·0.05/5
    assert levels.tolist() == pytest.approx([1 - 0.05 * 4 / 5] * 5)
    assert adjusted.tolist() == pytest.approx([0.005, 0.02, 0.145 / 3, 0.04875, 0.2])
    assert holm(p, 0.05)[0].tolist() == [True, True, False, False, False]
    assert benjamini_hochberg(np.array([0.5, 0.9]), 0.05)[2].tolist() == pytest.approx([0.975, 0.975])  # R = 0: level 1 − α/m


def _random_family(rng: np.random.Generator) -> list[dict]:
    """Signed t rows, flip rates against their control (Wilson), gaps against theirs (t), in one table."""
    rows = []

    def add(metric, value, se, n, sources, label, method):
        rows.append({**{c: None for c in METRICS_SCHEMA}, "metric": metric, "stratum": "generated", "attribute": "gender",
                     "label": label, "value": value, "se": se, "n": n, "n_sources": sources, "interval_method": method,
                     "ci_low": value - 1, "ci_high": value + 1})

    for i in range(int(rng.integers(3, 12))):
        label = f"l{i}"
        sources = int(rng.integers(2, 40))
        add("prob_gap_signed", float(rng.normal(0, 0.05)), float(rng.uniform(0, 0.03)), 2 * sources, sources, label, "t")
        add("control_prob_gap_signed", float(rng.normal(0, 0.01)), float(rng.uniform(0.001, 0.02)), sources, sources, label, "t")
        add("prob_gap_abs", float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.03)), 2 * sources, sources, label, "t")
        add("control_prob_gap_abs", float(rng.uniform(0, 0.1)), float(rng.uniform(0.001, 0.02)),
            sources, int(rng.integers(2, 40)), label, "t")
    sources = int(rng.integers(2, 40))
    flip = float(rng.choice([0.0, rng.uniform(0, 1)]))
    add("flip_rate", flip, float(rng.uniform(0, 0.1)) if 0 < flip < 1 else 0.0, 2 * sources, sources, None, "wilson")
    control = float(rng.choice([0.0, rng.uniform(0, 0.5)]))
    add("control_flip_rate", control, float(rng.uniform(0, 0.1)) if control > 0 else 0.0, sources, sources, None, "wilson")
    return rows


@pytest.mark.parametrize("error_control", ["fwer", "fdr"])
def test_decisions_agree_with_the_intervals_they_are_shown_at(error_control):
    """50 seeded families: a row is rejected (p̃ ≤ α) exactly when its interval at its decision
    level is clear of its reference (0, or the control's interval at the same level)."""
    audit = AuditSection(error_control=error_control)
    decisions = 0
    for seed in range(50):
        metrics = apply_error_control(pl.DataFrame(_random_family(np.random.default_rng(seed)), schema=METRICS_SCHEMA), audit)
        controls = {(r["metric"], r["label"]): r for r in metrics.to_dicts() if r["metric"].startswith("control_")}
        for row in metrics.filter(pl.col("in_family")).to_dicts():
            rejected = row["p_adjusted"] <= 0.05
            low, high = row["ci_low_adjusted"], row["ci_high_adjusted"]
            if row["metric"].endswith("signed"):
                clear = low > 0 or high < 0
            else:
                c = controls[("control_" + row["metric"], row["label"])]
                _, c_high = interval_at(c["interval_method"], c["value"], c["se"], c["n"], c["n_sources"],
                                        row["confidence_adjusted"])
                clear = low > float(c_high)
            assert rejected == clear, (seed, row)
            assert row["p_value"] <= row["p_adjusted"] <= 1
            decisions += 1
    assert decisions > 300


def test_min_effect_reads_each_metric_on_its_scale():
    audit = AuditSection(min_effect={"probability": 0.02, "words": 2.0}, rating_scale=7)
    assert min_effect_for("flip_rate", audit) == 0.02 == min_effect_for("yes_prob_gap_signed", audit)
    assert min_effect_for("negative_control_gap_signed", audit) == 0.02
    assert min_effect_for("rating_gap_abs", audit) == pytest.approx(0.06)  # 0.01 · (7 − 1)
    assert min_effect_for("generation_words_gap_signed", audit) == 2.0
    assert min_effect_for("lexicon_warmth_gap_signed", audit) == 0.05
    assert min_effect_for("drift_blue", audit, {"colour": 0.02}) == 0.02
    assert min_effect_for("drift_attribute", audit) == 0.05
    assert min_effect_for("selection_rate", audit) is None
