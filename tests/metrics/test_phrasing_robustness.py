"""Phrasing robustness on hand-built frames: a probe asked in several phrasings gets its rows per
phrasing, pooled (the pooled interval resampling sources and phrasings) and their spread; only the
pooled row is in the family; a called row is robust or phrasing-dependent by the signs of its
phrasings' gaps. Every expected number is worked out by hand, asymmetric so a swapped sign fails."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from metric_frames import generated_predictions
from test_auditee_metrics import SOURCES, generated_pool, pick, probes_frame
from test_findings import r, table

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.findings import decide_findings
from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.metrics.intervals import IntervalSettings, crossed_mean_estimates, mean_estimates
from counterfactual_lab.report.findings import assess_findings

QUESTION = "Is this person a doctor?"
OTHER = "Would you say this person is a doctor?"
AUDIT = AuditSection(kind="vlm", model="m", yes_no=[QUESTION], phrasings={QUESTION: [OTHER]}, bootstrap_samples=400)


def two_phrasings() -> pl.DataFrame:
    """P(yes) per image in two phrasings of one question. The configured one: reconstruction 0.2,
    counterfactual 0.5 (Δ = +0.3 on every source), control 0.25 (control Δ = +0.05); the other:
    reconstruction 0.4, counterfactual 0.3 (Δ = −0.1), control 0.4 (control Δ = 0); originals 0.5 and 0.45."""
    first, second = {}, {}
    for s in range(SOURCES):
        first |= {f"o{s}": 0.5, f"r{s}": 0.2, f"c{s}": 0.5, f"k{s}": 0.25}
        second |= {f"o{s}": 0.45, f"r{s}": 0.4, f"c{s}": 0.3, f"k{s}": 0.4}
    return pl.concat([probes_frame(first, prompt=QUESTION), probes_frame(second, prompt=OTHER)])


def test_a_probe_in_two_phrasings_is_measured_per_phrasing_pooled_and_by_its_spread():
    metrics = auditee_metrics(generated_pool(), two_phrasings(), pl.DataFrame(), AUDIT)
    pooled = pick(metrics, "yes_prob_gap_signed", group=None, phrasing=None)
    first = pick(metrics, "yes_prob_gap_signed", group=None, phrasing=QUESTION)
    second = pick(metrics, "yes_prob_gap_signed", group=None, phrasing=OTHER)
    assert (first["value"], second["value"]) == (pytest.approx(0.3), pytest.approx(-0.1))
    assert pooled["value"] == pytest.approx((0.3 * SOURCES - 0.1 * SOURCES) / (2 * SOURCES))  # +0.1 over 12 cells
    assert pooled["query"] == first["query"] == second["query"] == QUESTION  # one comparison, its prompt as configured
    assert (pooled["n"], first["n"], pooled["n_sources"]) == (2 * SOURCES, SOURCES, SOURCES)
    assert pick(metrics, "yes_prob_gap_abs", group=None, phrasing=None)["value"] == pytest.approx(0.2)
    # Each phrasing has its control; the pooled row's control is pooled too.
    assert pick(metrics, "control_yes_prob_gap_signed", phrasing=QUESTION)["value"] == pytest.approx(0.05)
    assert pick(metrics, "control_yes_prob_gap_signed", phrasing=OTHER)["value"] == pytest.approx(0.0)
    assert pick(metrics, "control_yes_prob_gap_signed", phrasing=None)["value"] == pytest.approx(0.025)
    # The spread: the range of the per-phrasing values, one row per pooled row, never in the family.
    spread = pick(metrics, "phrasing_spread", group=None, measure="yes_prob_gap_signed")
    assert spread["value"] == pytest.approx(0.4) and spread["query"] == QUESTION and spread["phrasing"] is None
    assert spread["ci_low"] is None and "-0.1" in spread["note"] and "0.3" in spread["note"]
    assert pick(metrics, "phrasing_spread", group=None, measure="yes_prob_gap_abs")["value"] == pytest.approx(0.2)
    # Only pooled rows count in m; every row of one phrasing is reported.
    assert metrics.filter(pl.col("phrasing").is_not_null())["in_family"].sum() == 0
    assert pooled["in_family"] and not spread["in_family"]
    decided = decide_findings(metrics)
    assert set(decided.filter(pl.col("phrasing").is_not_null())["verdict"]) == {"reported"}
    assert set(decided.filter(pl.col("metric") == "phrasing_spread")["verdict"]) == {"reported"}
    # Group rows describe the configured phrasing (reconstructions 0.2, not 0.4).
    assert pick(metrics, "yes_prob_mean", group="male", stratum="generated")["value"] == pytest.approx(0.2)


def test_the_pooled_interval_resamples_phrasings_too():
    """With every source alike, only the phrasings vary: a resample of K = 2 phrasings draws (a, a),
    (a, b) or (b, b), so the replicates are a, (a+b)/2, b with chances ¼, ½, ¼ and their sd is
    |a − b|/(2√2); the interval that resamples sources alone sees no variation at all."""
    sources = np.repeat(np.arange(20), 2)
    phrasing = np.tile([0, 1], 20)
    values = np.where(phrasing == 0, 0.3, -0.1)[:, None]
    settings = IntervalSettings(n_resamples=4000, seed=3)
    crossed = crossed_mean_estimates(values, sources, phrasing, settings)[0]
    alone = mean_estimates(values, sources, settings)[0]
    assert crossed.value == alone.value == pytest.approx(0.1)
    assert alone.se == 0.0
    assert crossed.se == pytest.approx(0.4 / (2 * np.sqrt(2)) * np.sqrt(20 / 19), rel=0.05)
    assert crossed.low < 0 < crossed.high  # the phrasings disagree: no call on their pool
    # One phrasing is the plain cluster bootstrap.
    same = crossed_mean_estimates(values, sources, np.zeros(40), settings)[0]
    assert (same.value, same.se) == (alone.value, alone.se)


def test_label_prompt_phrasings_pool_the_shared_pair_metrics():
    """A contrastive label prompt in two phrasings: the second's P(doctor) is 0.1 higher on every
    counterfactual, so its Δ is the first's + 0.1 (metric_frames: mean Δ −0.1625 → −0.0625)."""
    predictions = generated_predictions()
    second = pl.when(pl.col("variant") == "counterfactual").then(pl.col("score_doctor") + 0.1).otherwise(pl.col("score_doctor"))
    predictions = predictions.with_columns(second.alias("score_doctor@1")).with_columns(
        (1 - pl.col("score_doctor@1")).alias("score_nurse@1"),
        pl.when(pl.col("score_doctor@1") >= 0.5).then(pl.lit("doctor")).otherwise(pl.lit("nurse")).alias("top1@1"))
    audit = AuditSection(labels=["doctor", "nurse"], phrasings={"a photo of a {label}": ["a picture of a {label}"]},
                         bootstrap_samples=200, min_group_size=2)
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), audit, {"gender": ["female", "male"]})
    gap = {p: pick(metrics, "prob_gap_signed", group=None, label="doctor", phrasing=p)["value"]
           for p in (None, "a photo of a {label}", "a picture of a {label}")}
    assert gap["a photo of a {label}"] == pytest.approx(-0.1625)
    assert gap["a picture of a {label}"] == pytest.approx(-0.0625)
    assert gap[None] == pytest.approx(-0.1125)
    assert pick(metrics, "phrasing_spread", group=None, label="doctor", measure="prob_gap_signed")["value"] == pytest.approx(0.1)
    # The second phrasing flips s1 (0.8 → 0.4) and s3 (0.4 → 0.55): 2 of 4 pairs; the first s1 only.
    assert pick(metrics, "flip_rate", group=None, phrasing="a picture of a {label}")["value"] == pytest.approx(0.5)
    assert pick(metrics, "flip_rate", group=None, phrasing="a photo of a {label}")["value"] == pytest.approx(0.25)
    assert pick(metrics, "flip_rate", group=None, phrasing=None)["value"] == pytest.approx(0.375)
    # Negative controls and group metrics read the configured phrasing only.
    assert metrics.filter((pl.col("metric") == "selection_rate") & pl.col("phrasing").is_not_null()).is_empty()


def _phrased(metric: str, values: list[float], controls: list[float] | None = None) -> list[dict]:
    """The pooled row (called: far from 0 and its control) and one row per phrasing of a probe, with controls."""
    rows = [r(metric, 0.2, 0.01, query=QUESTION, sources=40)]
    if controls is not None:
        rows.append(r("control_" + metric, 0.05, 0.01, query=QUESTION, sources=40))
    for k, value in enumerate(values):
        rows.append({**r(metric, value, 0.02, query=QUESTION, sources=40), "phrasing": f"p{k}"})
        if controls is not None:
            rows.append({**r("control_" + metric, controls[k], 0.02, query=QUESTION, sources=40), "phrasing": f"p{k}"})
    return rows


@pytest.mark.parametrize("metric, values, controls, robustness", [
    ("yes_prob_gap_signed", [0.3, 0.1, 0.2], None, "robust"),
    ("yes_prob_gap_signed", [0.5, 0.15, -0.05], None, "phrasing-dependent"),
    # Called above its control: each phrasing's excess over its own control.
    ("yes_prob_gap_abs", [0.3, 0.1, 0.2], [0.05, 0.05, 0.05], "robust"),
    ("yes_prob_gap_abs", [0.3, 0.25, 0.06], [0.05, 0.05, 0.1], "phrasing-dependent"),
], ids=["signed-robust", "signed-flips", "abs-robust", "abs-one-below-its-control"])
def test_a_called_row_is_robust_only_when_every_phrasing_has_the_same_sign(metric, values, controls, robustness):
    rows = _phrased(metric, values, controls)
    if controls is None:
        rows.append(r("control_" + metric, 0.0, 0.01, query=QUESTION, sources=40))
    findings = assess_findings(table(rows))
    pooled = findings.filter((pl.col("metric") == metric) & pl.col("phrasing").is_null()).row(0, named=True)
    assert pooled["called"] and pooled["robustness"] == robustness
    assert robustness in pooled["sentence"]
    assert findings.filter(pl.col("phrasing").is_not_null())["robustness"].is_null().all()
    # m counts the pooled row alone.
    assert table(rows).filter(pl.col("in_family"))["phrasing"].is_null().all()
