"""The metrics table on hand-built prediction frames of the pool contract, every value worked by hand.

Fixtures are asymmetric on purpose: a flip rate of 1/4 (computed with == it would be 3/4), a
negative signed gap (abs() would make it positive), a transition with 0 flips (its interval
must not collapse to [0, 0]).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference
from metric_frames import generated_predictions, one, row
from scipy.special import stdtrit

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import METRICS_SCHEMA, compute_metrics, metric_parameters
from counterfactual_lab.metrics.counterfactual_fairness import flip_rate, probability_gap
from counterfactual_lab.metrics.group_fairness import equalized_odds, parity
from counterfactual_lab.metrics.intervals import wilson_interval
from counterfactual_lab.metrics.pairs import control_pairs, member_pairs, original_pairs, reconstruction_pairs

LABELS = ["doctor", "nurse"]
AUDIT = AuditSection(labels=LABELS, queries=["a photo of a doctor"], top_k=2, bootstrap_samples=200, min_group_size=1)
Z95 = 1.959963984540054


def test_pairs_are_reconstruction_to_counterfactual_within_a_set():
    pairs = reconstruction_pairs(generated_predictions(), LABELS)
    assert pairs.height == 4
    assert pairs.sort("source_id")["transition"].to_list() == ["male→female", "male→female", "female→male", "female→male"]
    assert flip_rate(pairs) == pytest.approx(0.25)
    assert probability_gap(pairs, "doctor") == (pytest.approx(0.1875), pytest.approx(-0.1625))


def test_control_pairs_are_the_control_beside_each_kept_set_of_its_source():
    predictions = generated_predictions()
    # s1 gets a second kept set (seed 1): its control is paired with both reconstructions.
    predictions = pl.concat([predictions, pl.DataFrame([
        row("s1-r1", "s1", "reconstruction", "male", 0.9, set_id="s1-gender-1", seed=1),
        row("s1-c1", "s1", "counterfactual", "female", 0.9, set_id="s1-gender-1", seed=1),
    ])])
    controls = control_pairs(predictions, LABELS)
    assert controls.height == 5
    assert sorted(controls.filter(pl.col("source_id") == "s1")["set_id"].to_list()) == ["s1-gender-0", "s1-gender-1"]
    assert set(controls["transition"]) == {"male→male", "female→female"}


def test_generated_stratum_rows_by_hand():
    metrics = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})
    assert metrics.columns == list(METRICS_SCHEMA)
    # The shared contract's columns in its order, then the error-control ones, the decision's inputs, the ranking ones,
    # the modality.
    assert metrics.columns == ["metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n",
                               "n_sources", "skipped_resamples", "note", "ci_low_adjusted", "ci_high_adjusted",
                               "confidence_adjusted", "comparisons", "p_value", "p_adjusted", "in_family", "min_effect",
                               "se", "interval_method", "protocol", "k", "desired", "modality", "phrasing", "measure"]
    assert set(metrics["modality"]) == {"image"}
    flips = one(metrics, "flip_rate", stratum="generated", group=None)
    assert (flips["value"], flips["n"], flips["n_sources"], flips["skipped_resamples"]) == (pytest.approx(0.25), 4, 4, 0)
    assert flips["ci_low"] <= 0.25 <= flips["ci_high"]
    signed = one(metrics, "prob_gap_signed", stratum="generated", group=None, label="doctor")
    # The t interval on 4 sources: −0.1625 ± t₃·se, se ≈ sd(−0.5, −0.1, +0.05, −0.1)/√4 ≈ 0.118.
    assert signed["value"] == pytest.approx(-0.1625) and signed["ci_low"] < -0.4 and 0.1 < signed["ci_high"] < 0.3
    assert signed["interval_method"] == "t" and 0.09 < signed["se"] < 0.14
    assert one(metrics, "prob_gap_abs", stratum="generated", group=None, label="doctor")["value"] == pytest.approx(0.1875)
    assert one(metrics, "prob_gap_signed", stratum="generated", group=None, label="nurse")["value"] == pytest.approx(0.1625)
    assert one(metrics, "prob_gap_signed", group="male→female", label="doctor")["value"] == pytest.approx(-0.3)
    assert one(metrics, "flip_rate", group="male→female")["value"] == pytest.approx(0.5)
    # 0 flips in 2 pairs from 2 sources: Wilson at n = 2 sources (t quantile, 1 degree of freedom), not [0, 0].
    none_flip = one(metrics, "flip_rate", group="female→male")
    assert none_flip["value"] == 0.0 and none_flip["n_sources"] == 2
    q = float(stdtrit(1, 0.975))
    assert (none_flip["ci_low"], none_flip["ci_high"]) == (0.0, pytest.approx(q * q / (2 + q * q)))
    # The control, beside them.
    assert one(metrics, "control_flip_rate")["value"] == pytest.approx(0.25)
    assert one(metrics, "control_prob_gap_abs", label="doctor")["value"] == pytest.approx(0.0875)
    control_signed = one(metrics, "control_prob_gap_signed", label="doctor")
    assert control_signed["value"] == pytest.approx(0.0375) and control_signed["stratum"] == "generated"
    assert control_signed["group"] is None and control_signed["n"] == 4


def test_group_metrics_rank_the_generated_sets_without_controls_or_originals():
    metrics = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})
    # Generated pool: reconstructions + counterfactuals (8 images); controls and originals excluded.
    # top1 = doctor: male s1-r(0.8) s2-r(0.7) s3-c(0.45 no) s4-c(0.1 no) -> 2/4; female s1-c(0.3 no) s2-c(0.6) s3-r s4-r no -> 1/4
    assert one(metrics, "selection_rate", stratum="generated", group="male", label="doctor")["value"] == pytest.approx(0.5)
    assert one(metrics, "selection_rate", stratum="generated", group="female", label="doctor")["value"] == pytest.approx(0.25)
    parity_row = one(metrics, "demographic_parity_difference", stratum="generated", label="doctor")
    assert (parity_row["value"], parity_row["n"], parity_row["n_sources"]) == (pytest.approx(0.25), 8, 4)
    # Originals: their own, observational stratum. male s1(0.8) s2(0.7) -> 1; female s3 s4 -> 0.
    assert one(metrics, "demographic_parity_difference", stratum="observational", label="doctor")["value"] == pytest.approx(1.0)
    assert set(metrics["stratum"]) == {"generated", "observational"}


def test_evaluate_only_pairs_every_ordered_pair_of_a_set():
    # set A: a(doctor) b(doctor) c(nurse) -> 6 ordered pairs, 4 flip; set B: a(doctor) b(nurse) -> 2 pairs, 2 flip.
    rows = [
        row("A-a", "A", "counterfactual", "a", 0.9, set_id="A", attribute="race"),
        row("A-b", "A", "counterfactual", "b", 0.8, set_id="A", attribute="race"),
        row("A-c", "A", "counterfactual", "c", 0.2, set_id="A", attribute="race"),
        row("B-a", "B", "counterfactual", "a", 0.7, set_id="B", attribute="race"),
        row("B-b", "B", "counterfactual", "b", 0.4, set_id="B", attribute="race"),
    ]
    predictions = pl.DataFrame(rows)
    pairs = member_pairs(predictions, LABELS)
    assert pairs.height == 8
    assert sorted(pairs.filter(pl.col("set_id") == "A")["transition"].to_list()) == ["a→b", "a→c", "b→a", "b→c", "c→a", "c→b"]
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT, {"race": ["a", "b", "c"]})
    flips = one(metrics, "flip_rate", stratum="evaluate_only", group=None)
    assert (flips["value"], flips["n"], flips["n_sources"]) == (pytest.approx(6 / 8), 8, 2)
    # a→c: 0.9 → 0.2; a→b: (0.8 − 0.9) and (0.4 − 0.7) -> mean −0.2
    assert one(metrics, "prob_gap_signed", group="a→c", label="doctor")["value"] == pytest.approx(-0.7)
    assert one(metrics, "prob_gap_signed", group="a→b", label="doctor")["value"] == pytest.approx(-0.2)
    assert one(metrics, "prob_gap_signed", group="b→a", label="doctor")["value"] == pytest.approx(0.2)
    assert not metrics["metric"].str.starts_with("control_").any()


def test_real_vs_generated_when_reconstruction_is_off():
    # The old pool: no control/seed/set_id columns, originals and counterfactuals.
    rows = [row("s1", "s1", "original", "male", 0.8), row("c1", "s1", "counterfactual", "female", 0.3),
            row("s2", "s2", "original", "male", 0.7), row("c2", "s2", "counterfactual", "female", 0.6),
            row("s3", "s3", "original", "female", 0.4), row("c3", "s3", "counterfactual", "male", 0.9)]
    predictions = pl.DataFrame(rows).drop("control", "seed", "set_id")
    assert original_pairs(predictions.with_columns(pl.lit(False).alias("control"), pl.lit(None, pl.String).alias("set_id")), LABELS).height == 3
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT)
    flips = one(metrics, "flip_rate", stratum="real_vs_generated", group=None)
    assert flips["value"] == pytest.approx(2 / 3) and flips["n"] == 3
    assert one(metrics, "prob_gap_signed", stratum="real_vs_generated", group=None, label="doctor")["value"] == pytest.approx((-0.5 - 0.1 + 0.5) / 3)
    assert {"real_vs_generated", "observational"} == set(metrics["stratum"])


def test_equalized_odds_is_undefined_for_a_group_without_positives_where_fairlearn_says_one():
    # Group a is all doctors, group b all nurses; the model calls everyone a doctor (answers every group the same).
    y_true = np.array([True, True, True, False, False, False])
    y_pred = np.ones(6, dtype=bool)
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert equalized_odds_difference(y_true, y_pred, sensitive_features=groups) == pytest.approx(1.0)
    estimate = equalized_odds(y_true, y_pred, groups, np.arange(6))
    assert estimate.value is None
    assert estimate.note == ("group b has no positives (TPR undefined); group a has no negatives (FPR undefined)")
    frame = pl.DataFrame([row(f"i{i}", f"i{i}", "original", g, 0.9, label="doctor" if t else "nurse") for i, (g, t) in enumerate(zip(groups, y_true))])
    metrics = compute_metrics(frame, pl.DataFrame(), pl.DataFrame(), AUDIT)
    odds = one(metrics, "equalized_odds_difference", stratum="observational", label="doctor")
    assert odds["value"] is None and odds["ci_low"] is None and "group b has no positives" in odds["note"]


def test_min_group_size_leaves_small_groups_out_and_names_them():
    # a: 6 images, 4 doctors; b: 6 images, 1 doctor; c: 2 images, 2 doctors (left out at min_group_size=5).
    tops = {"a": [1, 1, 1, 1, 0, 0], "b": [1, 0, 0, 0, 0, 0], "c": [1, 1]}
    frame = pl.DataFrame([row(f"{g}{i}", f"{g}{i}", "original", g, 0.9 if hit else 0.1)
                          for g, hits in tops.items() for i, hit in enumerate(hits)])
    audit = AUDIT.model_copy(update={"min_group_size": 5})
    metrics = compute_metrics(frame, pl.DataFrame(), pl.DataFrame(), audit)
    parity_row = one(metrics, "demographic_parity_difference", label="doctor")
    assert parity_row["value"] == pytest.approx(4 / 6 - 1 / 6) and parity_row["n"] == 12
    assert parity_row["note"] == "left out, fewer than min_group_size=5 images: c (2)"
    assert metrics.filter((pl.col("metric") == "selection_rate") & (pl.col("group") == "c")).height == 0
    ratio = one(metrics, "demographic_parity_ratio", label="doctor")
    assert ratio["value"] == pytest.approx((1 / 6) / (4 / 6))
    # With a floor of 7 no two groups remain: parity is undefined, with the reason.
    metrics = compute_metrics(frame, pl.DataFrame(), pl.DataFrame(), AUDIT.model_copy(update={"min_group_size": 7}))
    parity_row = one(metrics, "demographic_parity_difference", label="doctor")
    assert parity_row["value"] is None
    assert parity_row["note"].startswith("fewer than two groups with at least min_group_size=7 images")
    assert "a (6), b (6), c (2)" in parity_row["note"]


@pytest.fixture(scope="module")
def random_predictions() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    n = 300
    groups = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    truth = rng.choice(LABELS, n)
    p_doctor = np.clip(rng.normal(0.45, 0.2, n) + 0.15 * (groups == "a") + 0.2 * (truth == "doctor"), 0, 1)
    return pl.DataFrame([row(f"i{i}", f"i{i}", "original", g, float(p), label=str(t))
                         for i, (g, p, t) in enumerate(zip(groups, p_doctor, truth))])


@pytest.mark.parametrize("label", LABELS)
def test_parity_and_equalized_odds_equal_fairlearn_where_defined(random_predictions, label):
    y_pred = (random_predictions["top1"] == label).to_numpy()
    y_true = (random_predictions["label"] == label).to_numpy()
    groups = random_predictions["group"].to_numpy()
    metrics = compute_metrics(random_predictions, pl.DataFrame(), pl.DataFrame(), AUDIT)
    assert one(metrics, "demographic_parity_difference", label=label)["value"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=groups))
    assert one(metrics, "demographic_parity_ratio", label=label)["value"] == pytest.approx(
        demographic_parity_ratio(y_true, y_pred, sensitive_features=groups))
    odds = one(metrics, "equalized_odds_difference", label=label)
    assert odds["value"] == pytest.approx(equalized_odds_difference(y_true, y_pred, sensitive_features=groups))
    assert odds["n"] == 300 and odds["ci_low"] <= odds["value"] <= odds["ci_high"]


def test_parity_interval_reaches_zero_when_the_groups_agree():
    # Balanced sets where every member gets the same answer: parity is exactly 0, and the
    # interval must contain it (a percentile interval of max − min would sit above 0).
    rng = np.random.default_rng(3)
    answers = rng.random(40) < 0.5
    y_pred = np.repeat(answers, 2)
    groups = np.tile(["f", "m"], 40)
    clusters = np.repeat(np.arange(40), 2)
    from counterfactual_lab.metrics.intervals import IntervalSettings

    _, diff, ratio = parity(y_pred, groups, clusters, IntervalSettings(300, 0.95, 0))
    assert (diff.value, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert (ratio.value, ratio.low, ratio.high) == (1.0, 1.0, 1.0)
    y_pred = y_pred.copy()
    y_pred[[0, 3, 5]] = ~y_pred[[0, 3, 5]]  # three members disagree: parity ~ 1/40, interval from 0
    _, diff, _ = parity(y_pred, groups, clusters, IntervalSettings(300, 0.95, 0))
    assert diff.value == pytest.approx(1 / 40) and diff.low == 0.0 < diff.value < diff.high


def test_unlisted_source_value_is_paired_but_left_out_of_the_balanced_sets():
    predictions = pl.concat([generated_predictions(), pl.DataFrame([
        row("s5-r", "s5", "reconstruction", "nonbinary", 0.9, set_id="s5-gender-0", seed=0),
        row("s5-c", "s5", "counterfactual", "male", 0.2, set_id="s5-gender-0", seed=0),
    ])])
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["Female", "male"]})
    assert one(metrics, "flip_rate", group="nonbinary→male")["n"] == 1
    parity_row = one(metrics, "demographic_parity_difference", stratum="generated", label="doctor")
    assert parity_row["note"] == "left out, not among the attribute's values ['female', 'male']: nonbinary (1)"
    # male now has s5-c (0.2, nurse) too: 2/5 doctor; female 1/4.
    assert parity_row["value"] == pytest.approx(2 / 5 - 1 / 4)


def test_metric_parameters_name_every_parameter():
    params = metric_parameters(AuditSection(bootstrap_seed=3, bootstrap_samples=500, confidence=0.9, top_k=7, min_group_size=4))
    assert {k: params[k] for k in ("bootstrap_seed", "bootstrap_samples", "confidence", "top_k", "min_group_size")} == {
        "bootstrap_seed": 3, "bootstrap_samples": 500, "confidence": 0.9, "top_k": 7, "min_group_size": 4}
    assert "Wilson" in " ".join(params["interval_methods"].values())
    # Each interval method under its own name: the spreads are not plain cluster percentiles.
    methods = params["interval_methods"]
    assert methods["demographic parity difference, equalized odds difference"].startswith("simultaneous pairwise spread")
    assert methods["demographic parity ratio"].startswith("simultaneous pairwise log ratio")
    assert not any("parity" in key for key, method in methods.items() if method.startswith("cluster percentile"))
    assert any(method.startswith("t interval with C - 1 degrees of freedom") for method in methods.values())
    # The error control, what it promises, the smallest effects and the drift thresholds.
    assert params["error_control"]["procedure"] == "holm" and params["error_control"]["alpha"] == pytest.approx(0.1)
    assert "family-wise" in params["error_control"]["promise"]
    assert params["min_effect"] == {"probability": 0.01, "words": 1.0, "lexicon": 0.05, "rating": pytest.approx(0.04)}
    assert params["drift"]["max_drift"] == {"brightness": 0.01, "colour": 0.01, "attribute": 0.05, "outside_mask": 0.02}
    fdr = metric_parameters(AuditSection(error_control="fdr", min_effect={"probability": 0.02, "rating": 0.5}))
    assert fdr["error_control"]["procedure"] == "benjamini-hochberg" and "false discovery rate" in fdr["error_control"]["promise"]
    assert fdr["min_effect"]["probability"] == 0.02 and fdr["min_effect"]["rating"] == 0.5
    import json

    json.dumps(params)


def test_the_seed_changes_intervals_and_reruns_do_not():
    a = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT)
    b = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT)
    c = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT.model_copy(update={"bootstrap_seed": 1}))
    assert a.equals(b)
    assert not a.equals(c)
    assert a.select("metric", "value").equals(c.select("metric", "value"))


def test_bad_predictions_say_what_is_wrong():
    frame = generated_predictions()
    with pytest.raises(ValueError, match=r"predictions lack columns \['score_nurse'\]"):
        compute_metrics(frame.drop("score_nurse"), pl.DataFrame(), pl.DataFrame(), AUDIT)
    with pytest.raises(ValueError, match="variants \\['edited'\\]"):
        compute_metrics(frame.with_columns(pl.lit("edited").alias("variant")), pl.DataFrame(), pl.DataFrame(), AUDIT)
    assert wilson_interval(0, 10, 0.95)[1] == pytest.approx(Z95**2 / (10 + Z95**2))


def test_pairs_from_fewer_sources_than_min_group_size_get_no_interval():
    # Each transition rests on 2 source images, the whole attribute on 4.
    audit = AUDIT.model_copy(update={"min_group_size": 3})
    metrics = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), audit)
    transition = one(metrics, "flip_rate", group="male→female")
    assert transition["value"] == pytest.approx(0.5) and transition["ci_low"] is None and transition["ci_high"] is None
    assert transition["note"] == "fewer than min_group_size=3 source images (2): no interval"
    overall = one(metrics, "flip_rate", stratum="generated", group=None)
    assert overall["ci_low"] is not None and overall["note"] is None


def test_resamples_where_a_group_is_missing_are_skipped_and_counted():
    # 12 sources: group b lives in source s0 alone (2 images). A resample without s0 has one group:
    # parity is undefined there (skipped), not 0 — and the count is exactly those resamples.
    from counterfactual_lab.metrics.intervals import ClusterBootstrap, IntervalSettings, cluster_codes

    frame = pl.DataFrame(
        [row("s0-1", "s0", "original", "b", 0.9), row("s0-2", "s0", "original", "b", 0.9)]
        + [row(f"s{i}", f"s{i}", "original", "a", 0.9 if i % 3 else 0.1) for i in range(1, 12)]
    )
    audit = AUDIT.model_copy(update={"bootstrap_samples": 400})
    metrics = compute_metrics(frame, pl.DataFrame(), pl.DataFrame(), audit)
    parity_row = one(metrics, "demographic_parity_difference", label="doctor")
    codes, c = cluster_codes(frame["source_id"].to_list())
    s0 = codes[0]
    counts = np.concatenate(list(ClusterBootstrap(c, IntervalSettings(400, 0.95, 0)).count_blocks()))
    without_b = int((counts[:, s0] == 0).sum())
    assert without_b > 100  # (11/12)^12 ≈ 35% of 400
    assert parity_row["skipped_resamples"] == without_b
    # b is always selected, a in 8 of 11 (s3, s6, s9 not): difference 3/11, its interval from the resamples with both.
    assert parity_row["value"] == pytest.approx(3 / 11) and parity_row["ci_low"] >= 0.0


def test_the_independent_recomputation_agrees_on_every_design():
    """tests/metric_frames.recompute_pair_metrics (used end to end) against compute_metrics on all three designs."""
    from metric_frames import recompute_pair_metrics

    evaluate_only = pl.DataFrame([row(f"A-{g}", "A", "counterfactual", g, p, set_id="A", attribute="race")
                                  for g, p in (("a", 0.9), ("b", 0.8), ("c", 0.2))])
    real_vs_generated = generated_predictions().filter(pl.col("variant") != "reconstruction")
    for frame in (generated_predictions(), evaluate_only, real_vs_generated):
        metrics = compute_metrics(frame, pl.DataFrame(), pl.DataFrame(), AUDIT)
        expected = recompute_pair_metrics(frame, LABELS)
        assert expected
        for (stratum, attribute, metric, label), (value, n, sources) in expected.items():
            found = one(metrics, metric, stratum=stratum, attribute=attribute, group=None, label=label)
            assert (found["value"], found["n"], found["n_sources"]) == (pytest.approx(value), n, sources)


def _originals_only(attribute: str) -> pl.DataFrame:
    """The four sources of generated_predictions as originals of ``attribute`` (nothing generated survived)."""
    frame = generated_predictions().filter(pl.col("variant") == "original")
    return frame.with_columns(pl.lit(attribute).alias("attribute"))


def test_an_attribute_without_kept_sets_gets_undefined_comparison_rows_not_none():
    # Gender has its sets; every age set was dropped, so age holds originals only.
    predictions = pl.concat([generated_predictions(), _originals_only("age")])
    values = {"gender": ["female", "male"], "age": ["old", "young"]}
    for design in ("generated", None):  # the config's design, or read from the pool (gender's sets show it)
        metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT, values, design=design)
        age = metrics.filter((pl.col("attribute") == "age") & (pl.col("stratum") == "generated"))
        flips = one(age, "flip_rate", group=None)
        assert flips["value"] is None and flips["note"] == "no pairs: no kept set of this attribute is in the evaluation pool"
        assert one(age, "prob_gap_signed", group=None, label="nurse")["value"] is None
        assert one(age, "control_flip_rate")["note"].startswith("no control pairs")
        assert one(metrics, "flip_rate", stratum="generated", attribute="gender", group=None)["value"] == pytest.approx(0.25)


def test_a_run_whose_judge_dropped_every_set_is_undefined_not_no_finding(tmp_path):
    from counterfactual_lab.metrics.findings import any_bias_finding, bias_verdict
    from counterfactual_lab.report.markdown import summary_markdown

    judged = pl.DataFrame({"source_id": ["s1", "s1", "s2"], "attribute": ["gender"] * 3, "kept": [False] * 3,
                           "variant": ["reconstruction", "counterfactual", "counterfactual"], "control": [False] * 3})
    values = {"gender": ["female", "male"], "age": ["old", "young"]}
    metrics = compute_metrics(_originals_only("gender"), pl.DataFrame(), judged, AUDIT, values, design="generated")
    flips = one(metrics, "flip_rate", stratum="generated", attribute="gender", group=None)
    assert flips["value"] is None and flips["note"] == "no pairs: every set of this attribute was dropped by the judge"
    assert one(metrics, "flip_rate", stratum="generated", attribute="age", group=None)["note"] == (
        "no pairs: no set of this attribute was generated")
    assert not any_bias_finding(metrics) and bias_verdict(metrics) == "undefined"
    assert ('gender: undefined, not "no difference" (no pairs: every set of this attribute was dropped by the judge).'
            in summary_markdown({}, metrics, None))
    # Reconstruction off: the same words for counterfactuals; evaluate-only: no set had two values.
    off = compute_metrics(_originals_only("gender"), pl.DataFrame(), judged.drop("variant", "control"), AUDIT, values,
                          design="real_vs_generated")
    assert one(off, "flip_rate", stratum="real_vs_generated", attribute="gender", group=None)["note"] == (
        "no pairs: every counterfactual of this attribute was dropped by the judge")
    lone = pl.DataFrame([row("A-a", "A", "counterfactual", "a", 0.9, set_id="A", attribute="race")])
    sets = compute_metrics(lone, pl.DataFrame(), pl.DataFrame(), AUDIT, design="evaluate_only")
    assert one(sets, "flip_rate", stratum="evaluate_only", group=None)["note"] == (
        "no pairs: no counterfactual set of this attribute has two members with different values")
    # Nothing evaluated at all: every configured attribute still says its comparison is undefined.
    nothing = compute_metrics(pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), AUDIT, values, design="generated")
    assert sorted(nothing.filter(pl.col("metric") == "flip_rate")["attribute"].to_list()) == ["age", "gender"]
    assert bias_verdict(nothing) == "undefined"


def test_the_audit_task_passes_the_configs_design():
    from counterfactual_lab.tasks.evaluate import compute_fairness_metrics

    values = {"gender": ["female", "male"]}
    configured = compute_fairness_metrics.fn(_originals_only("gender"), pl.DataFrame(), pl.DataFrame(), AUDIT, values,
                                             reconstruction=True)
    assert one(configured, "flip_rate", stratum="generated", group=None)["value"] is None
    inferred = compute_fairness_metrics.fn(_originals_only("gender"), pl.DataFrame(), pl.DataFrame(), AUDIT, values)
    assert set(inferred["stratum"]) == {"observational"}, "without the design, a pool of originals cannot tell"
    off = compute_fairness_metrics.fn(_originals_only("gender"), pl.DataFrame(), pl.DataFrame(), AUDIT, values,
                                      reconstruction=False)
    assert one(off, "flip_rate", stratum="real_vs_generated", group=None)["value"] is None
    sets = compute_fairness_metrics.fn(pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), AUDIT, values, reconstruction=True,
                                       evaluate_only=True)
    assert set(sets["stratum"]) == {"evaluate_only"}


def test_a_design_the_pool_contradicts_is_refused():
    with pytest.raises(ValueError, match=r"predictions hold \['reconstruction'\] images, which a 'real_vs_generated' run"):
        compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, design="real_vs_generated")
    with pytest.raises(ValueError, match=r"design must be one of .*got 'observational' \(originals are described"):
        compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, design="observational")


def test_pair_rows_and_controls_carry_the_decision_of_the_error_control():
    metrics = compute_metrics(generated_predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})
    # m = 3 subsets (all pairs, male→female, female→male) × (flip rate + 2 gaps × 2 labels) = 15.
    flips = one(metrics, "flip_rate", stratum="generated", group=None)
    assert flips["comparisons"] == 15 and flips["in_family"] and flips["interval_method"] == "wilson"
    # Holm with nothing rejected (4 sources): every row is decided at the first step, 1 − α/m.
    levels = metrics.filter(pl.col("in_family"))["confidence_adjusted"]
    assert levels.min() == pytest.approx(1 - 0.05 / 15) == levels.max()
    assert flips["ci_low_adjusted"] <= flips["ci_low"] <= flips["ci_high"] <= flips["ci_high_adjusted"]
    assert 0 <= flips["p_value"] <= flips["p_adjusted"] <= 1 and flips["min_effect"] == 0.01
    # Controls sit beside their rows: not in the family themselves.
    control = one(metrics, "control_prob_gap_signed", label="doctor")
    assert not control["in_family"] and control["comparisons"] is None and control["se"] > 0
    # The 0/2 transition gets Wilson at n_eff = 2 sources, with the t quantile (1 degree of freedom).
    none_flip = one(metrics, "flip_rate", group="female→male")
    q = float(stdtrit(1, 0.975))
    assert (none_flip["ci_low"], none_flip["ci_high"]) == (0.0, pytest.approx(q * q / (2 + q * q)))
    # Rows nothing is called on carry none.
    observational = metrics.filter(pl.col("stratum") == "observational")
    assert observational["comparisons"].null_count() == observational.height and not observational["in_family"].any()
    assert one(metrics, "demographic_parity_difference", stratum="generated", label="doctor")["comparisons"] is None


def test_an_attribute_whose_control_rests_on_too_few_sources_leaves_m():
    """Gender: 12 sources with sets and controls; age: 12 sources with sets but only 3 kept controls,
    min_group_size 5. Every age row is out of the family; m counts gender alone: 3 × (1 + 2·2) = 15."""
    rows = []
    for s in range(12):
        own, other = ("male", "female") if s % 2 else ("female", "male")
        for attribute in ("gender", "age"):
            values = (own, other) if attribute == "gender" else (("young", "elderly") if s % 2 else ("elderly", "young"))
            set_id = f"s{s}-{attribute}-0"
            p = 0.3 + 0.04 * s
            rows += [row(f"s{s}-{attribute}-r", f"s{s}", "reconstruction", values[0], p, set_id=set_id, seed=0, attribute=attribute),
                     row(f"s{s}-{attribute}-c", f"s{s}", "counterfactual", values[1], p + 0.05, set_id=set_id, seed=0,
                         attribute=attribute)]
            if attribute == "gender" or s < 3:
                rows.append(row(f"s{s}-{attribute}-x", f"s{s}", "reconstruction", values[0], p - 0.01 * (s % 3), seed=1,
                                control=True, attribute=attribute))
    audit = AUDIT.model_copy(update={"min_group_size": 5})
    metrics = compute_metrics(pl.DataFrame(rows), pl.DataFrame(), pl.DataFrame(), audit,
                              {"gender": ["female", "male"], "age": ["young", "elderly"]})
    age = metrics.filter((pl.col("attribute") == "age") & (pl.col("stratum") == "generated"))
    assert age.height and not age["in_family"].any()
    assert one(metrics, "flip_rate", attribute="age", group=None)["value"] is not None, "the rows are there, with values"
    assert set(metrics.filter(pl.col("in_family"))["comparisons"]) == {15}
    assert metrics.filter(pl.col("in_family")).height == 15
