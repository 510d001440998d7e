"""Metrics on hand-computed fixtures, parity and equalized odds against fairlearn, the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
)

from counterfactual_lab.bootstrap import bootstrap_ci, resample_indices
from counterfactual_lab.cits import cits_score
from counterfactual_lab.config import AuditModelConfig
from counterfactual_lab.metrics import (
    compute_metrics,
    counterfactual_flip_rate,
    counterfactual_pairs,
    demographic_parity,
    equalized_odds,
    equalized_odds_replicates,
    parity_replicates,
    probability_gap,
)

LABELS = ["doctor", "nurse"]
AUDIT = AuditModelConfig(labels=LABELS, queries=["a photo of a doctor"], top_k=2, bootstrap_samples=200)


def _prediction(id_, source_id, variant, group, p_doctor, label="doctor", attribute="gender"):
    return {
        "id": id_, "source_id": source_id, "variant": variant, "attribute": attribute, "group": group,
        "caption": "c", "image_uri": f"mem://{id_}", "content_key": f"k-{id_}", "label": label,
        "score_doctor": p_doctor, "score_nurse": 1 - p_doctor, "top1": "doctor" if p_doctor >= 0.5 else "nurse",
        "caption_similarity": 0.3,
    }


@pytest.fixture
def predictions() -> pl.DataFrame:
    # Four pairs. s1, s2 male→female; s3, s4 female→male.
    #   s1: 0.8 → 0.3 flips (doctor → nurse), Δ = -0.5
    #   s2: 0.7 → 0.6 stays,                  Δ = -0.1
    #   s3: 0.4 → 0.9 flips (nurse → doctor), Δ = +0.5
    #   s4: 0.2 → 0.1 stays,                  Δ = -0.1
    # flip rate = 2/4 = 0.5 ; male→female 1/2 ; female→male 1/2
    # doctor gap: mean|Δ| = (0.5+0.1+0.5+0.1)/4 = 0.3 ; mean Δ = (-0.5-0.1+0.5-0.1)/4 = -0.05
    # male→female: mean|Δ| = 0.3, mean Δ = -0.3 ; female→male: mean|Δ| = 0.3, mean Δ = +0.2
    rows = [
        _prediction("s1", "s1", "original", "male", 0.8), _prediction("c1", "s1", "counterfactual", "female", 0.3),
        _prediction("s2", "s2", "original", "male", 0.7), _prediction("c2", "s2", "counterfactual", "female", 0.6),
        _prediction("s3", "s3", "original", "female", 0.4, label="nurse"), _prediction("c3", "s3", "counterfactual", "male", 0.9, label="nurse"),
        _prediction("s4", "s4", "original", "female", 0.2, label="nurse"), _prediction("c4", "s4", "counterfactual", "male", 0.1, label="nurse"),
    ]
    return pl.DataFrame(rows)


def _value(metrics: pl.DataFrame, metric: str, **where) -> float:
    frame = metrics.filter(pl.col("metric") == metric)
    for column, value in where.items():
        frame = frame.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)
    assert frame.height == 1, f"{metric} {where}: {frame}"
    return frame.row(0, named=True)


def test_flip_rate_and_probability_gap_by_hand(predictions):
    pairs = counterfactual_pairs(predictions, LABELS)
    assert pairs.height == 4
    assert counterfactual_flip_rate(pairs) == pytest.approx(0.5)
    assert probability_gap(pairs, "doctor") == (pytest.approx(0.3), pytest.approx(-0.05))
    assert sorted(pairs["transition"].unique().to_list()) == ["female→male", "male→female"]


def test_compute_metrics_rows_by_hand(predictions):
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT)
    overall = _value(metrics, "flip_rate", attribute="gender", group=None)
    assert overall["value"] == pytest.approx(0.5) and overall["n"] == 4
    assert _value(metrics, "flip_rate", group="male→female")["value"] == pytest.approx(0.5)
    signed = _value(metrics, "prob_gap_signed", group="male→female", label="doctor")
    assert signed["value"] == pytest.approx(-0.3) and signed["n"] == 2
    assert _value(metrics, "prob_gap_signed", group="female→male", label="doctor")["value"] == pytest.approx(0.2)
    assert _value(metrics, "prob_gap_abs", group=None, label="doctor")["value"] == pytest.approx(0.3)
    # Each interval contains its point estimate.
    for row in metrics.iter_rows(named=True):
        if row["ci_low"] is not None:
            assert row["ci_low"] - 1e-12 <= row["value"] <= row["ci_high"] + 1e-12, row
    assert metrics.columns == ["metric", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n"]


def test_parity_selection_rates_by_hand(predictions):
    # top1 == doctor: male rows s1(0.8) s2(0.7) c3(0.9) yes, c4(0.1) no -> 3/4
    #                 female rows c1(0.3) no, c2(0.6) yes, s3(0.4) no, s4(0.2) no -> 1/4
    parity = demographic_parity(predictions, "doctor")
    assert parity["by_group"] == {"female": pytest.approx(0.25), "male": pytest.approx(0.75)}
    assert parity["difference"] == pytest.approx(0.5)
    assert parity["ratio"] == pytest.approx(1 / 3)


@pytest.fixture
def random_predictions() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    n = 300
    groups = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    truth = rng.choice(LABELS, n)
    # A biased model: group a is called doctor more often.
    p_doctor = np.clip(rng.normal(0.45, 0.2, n) + 0.15 * (groups == "a") + 0.2 * (truth == "doctor"), 0, 1)
    return pl.DataFrame(
        [_prediction(f"i{i}", f"i{i}", "original", g, float(p), label=str(t)) for i, (g, p, t) in enumerate(zip(groups, p_doctor, truth))]
    )


@pytest.mark.parametrize("label", LABELS)
def test_parity_and_equalized_odds_equal_fairlearn(random_predictions, label):
    y_pred = (random_predictions["top1"] == label).to_numpy()
    y_true = (random_predictions["label"] == label).to_numpy()
    groups = random_predictions["group"].to_numpy()
    metrics = compute_metrics(random_predictions, pl.DataFrame(), pl.DataFrame(), AUDIT)
    assert _value(metrics, "demographic_parity_difference", label=label)["value"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
    )
    assert _value(metrics, "demographic_parity_ratio", label=label)["value"] == pytest.approx(
        demographic_parity_ratio(y_true, y_pred, sensitive_features=groups)
    )
    assert _value(metrics, "equalized_odds_difference", label=label)["value"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    )
    assert equalized_odds(random_predictions, label)["n"] == 300


def test_bootstrap_replicates_equal_fairlearn_on_each_resample(random_predictions):
    """The vectorised replicates behind the parity and odds intervals compute fairlearn's numbers."""
    label = "doctor"
    y_pred = (random_predictions["top1"] == label).to_numpy()
    y_true = (random_predictions["label"] == label).to_numpy()
    groups = random_predictions["group"].to_numpy()
    indices = resample_indices(len(y_pred), 5, seed=3)
    diff, ratio = parity_replicates(y_pred, groups, indices)
    odds = equalized_odds_replicates(y_true, y_pred, groups, indices)
    for b, rows in enumerate(indices):
        sf = groups[rows]
        assert diff[b] == pytest.approx(demographic_parity_difference(y_true[rows], y_pred[rows], sensitive_features=sf))
        assert ratio[b] == pytest.approx(demographic_parity_ratio(y_true[rows], y_pred[rows], sensitive_features=sf))
        assert odds[b] == pytest.approx(equalized_odds_difference(y_true[rows], y_pred[rows], sensitive_features=sf))


def test_equalized_odds_replicates_match_fairlearn_when_a_group_has_no_positives():
    y_true = np.array([True, False, True, False, False, False])
    y_pred = np.array([True, True, False, False, True, False])
    groups = np.array(["a", "a", "a", "b", "b", "b"])  # group b has no positives
    identity = np.arange(6)[None, :]
    assert equalized_odds_replicates(y_true, y_pred, groups, identity)[0] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    )


def test_no_equalized_odds_without_ground_truth(predictions):
    metrics = compute_metrics(predictions.with_columns(pl.lit(None, dtype=pl.String).alias("label")), pl.DataFrame(), pl.DataFrame(), AUDIT)
    assert metrics.filter(pl.col("metric") == "equalized_odds_difference").height == 0
    assert metrics.filter(pl.col("metric") == "demographic_parity_difference").height == 2


def test_retrieval_metrics_from_scores(predictions):
    # gender pool = 8 images (4 male, 4 female); query scores rank: c3(m) s1(m) s2(m) c2(f) ...
    # K = 2: top = m m -> Skew_m = ln((1+ε)/(1/2+ε)), MaxSkew group = male; Skew_f = ln(ε/(1/2+ε)).
    scores = {"c3": 0.9, "s1": 0.8, "s2": 0.7, "c2": 0.6, "s3": 0.4, "c1": 0.3, "s4": 0.2, "c4": 0.1}
    retrieval = pl.DataFrame(
        {"query": ["a photo of a doctor"] * 8, "id": list(scores), "content_key": [f"k-{i}" for i in scores], "score": list(scores.values())}
    )
    metrics = compute_metrics(predictions, retrieval, pl.DataFrame(), AUDIT)
    eps = 1e-4
    top = _value(metrics, "max_skew@2", query="a photo of a doctor")
    assert top["group"] == "male" and top["value"] == pytest.approx(math.log((1 + eps) / (0.5 + eps))) and top["n"] == 8
    assert _value(metrics, "min_skew@2")["value"] == pytest.approx(math.log(eps / (0.5 + eps)))
    # NDKL@2: both prefixes are (m 1, f 0): KL = ln 2 each, so NDKL = ln 2.
    assert _value(metrics, "ndkl@2")["value"] == pytest.approx(math.log(2))


def test_retrieval_ranks_each_image_once_when_chunks_score_it_twice(predictions):
    """The flow scores retrieval per evaluation chunk; an original that sits in two chunks (once per
    attribute) comes back twice and must still count once in Skew@K and NDKL."""
    scores = {"c3": 0.9, "s1": 0.8, "s2": 0.7, "c2": 0.6, "s3": 0.4, "c1": 0.3, "s4": 0.2, "c4": 0.1}
    retrieval = pl.DataFrame(
        {"query": ["a photo of a doctor"] * 8, "id": list(scores), "content_key": [f"k-{i}" for i in scores], "score": list(scores.values())}
    )
    once = compute_metrics(predictions, retrieval, pl.DataFrame(), AUDIT)
    twice = compute_metrics(predictions, pl.concat([retrieval, retrieval.slice(1, 3)]), pl.DataFrame(), AUDIT)
    retrieval_metrics = pl.col("metric").str.contains("skew|ndkl")
    assert once.filter(retrieval_metrics).equals(twice.filter(retrieval_metrics))
    assert _value(twice, "max_skew@2", query="a photo of a doctor")["n"] == 8


def test_cits_by_hand_and_reported_per_attribute():
    # a = 0.3, d = 0.2, p = 0.8 -> a' = 0.65, d' = 0.6, p' = 0.9
    # CITS = 3 / (1/0.65 + 1/0.6 + 1/0.9) = 3 / (1.538462 + 1.666667 + 1.111111) = 3 / 4.316239 ≈ 0.695050
    assert cits_score(0.3, 0.2, 0.8) == pytest.approx(3 / (1 / 0.65 + 1 / 0.6 + 1 / 0.9))
    assert cits_score(0.3, -1.0, 0.8) == 0.0
    counterfactuals = pl.DataFrame(
        {
            "attribute": ["gender", "gender", "gender"], "source_value": ["male", "male", "female"],
            "target_value": ["female", "female", "male"], "kept": [True, False, True],
            "text_similarity": [0.3, 0.9, 0.1], "direction_similarity": [0.2, 0.9, 0.0], "image_similarity": [0.8, 0.9, 0.6],
        }
    )
    predictions = pl.DataFrame([_prediction("s1", "s1", "original", "male", 0.8)])
    metrics = compute_metrics(predictions, pl.DataFrame(), counterfactuals, AUDIT)
    second = float(cits_score(0.1, 0.0, 0.6))
    overall = _value(metrics, "cits", group=None)
    assert overall["value"] == pytest.approx((0.695050 + second) / 2, abs=1e-6) and overall["n"] == 2
    assert _value(metrics, "cits", group="male→female")["value"] == pytest.approx(0.695050, abs=1e-6)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    low_s, high_s = bootstrap_ci(small, n_resamples=500, seed=1)
    low_l, high_l = bootstrap_ci(large, n_resamples=500, seed=1)
    assert low_s <= small.mean() <= high_s
    assert low_l <= large.mean() <= high_l
    assert (high_l - low_l) < (high_s - low_s) / 5  # width shrinks like 1/sqrt(n): sqrt(100) = 10


def test_bootstrap_is_seeded_and_accepts_a_statistic():
    data = np.arange(20, dtype=float)
    assert bootstrap_ci(data, seed=4) == bootstrap_ci(data, seed=4)
    assert bootstrap_ci(data, seed=4) != bootstrap_ci(data, seed=5)
    frame = pl.DataFrame({"x": data})
    via_frame = bootstrap_ci(frame, lambda f: f["x"].mean(), n_resamples=300, seed=2)
    assert via_frame == pytest.approx(bootstrap_ci(data, n_resamples=300, seed=2))
    assert bootstrap_ci([], seed=0) == (None, None)
    assert bootstrap_ci([3.0], seed=0) == (3.0, 3.0)
