""""Unclear" answers, how much answers change, the sentiment gap and the synthetic shift, on
hand-built frames (the generated design of test_auditee_metrics: per source an original, a set of
reconstruction (male) and counterfactual (female), and a control). Every number is worked out by
hand and asymmetric, so a swapped sign or a swapped pair fails."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from metric_frames import generated_predictions
from test_auditee_metrics import SOURCES, generated_pool, pick, probes_frame, yes_values

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.answer_change import TextSimilarity, rouge_change
from counterfactual_lab.metrics.findings import decide_findings
from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.report.designs import design_lines
from counterfactual_lab.report.findings import assess_findings

QUESTION = "Is this person a doctor? Answer yes, no or unclear."
CHOICE = "Which job: {options}?"
DESCRIBE = "Describe this person."
AUDIT = AuditSection(kind="vlm", model="m", yes_no=[QUESTION], unclear_option="unclear", bootstrap_samples=300)


def test_unclear_shares_get_group_rows_and_gaps_and_p_yes_stays_on_the_answers_given():
    """The unclear share: reconstructions 0.1, counterfactuals 0.4 (Δ = +0.3, male → female),
    controls 0.1 + 0.01·s (control Δ = 0.01·s, mean 0.025), originals 0.2."""
    values = yes_values()
    probes = probes_frame(values, prompt=QUESTION).with_columns(
        pl.col("content_key").map_elements(
            lambda k: {"r": 0.1, "c": 0.4, "o": 0.2, "k": 0.1 + 0.01 * int(k[1:])}[k[0]], return_dtype=pl.Float64
        ).alias("unclear"))
    metrics = auditee_metrics(generated_pool(), probes, pl.DataFrame(), AUDIT, (), {"gender": ["female", "male"]})
    assert pick(metrics, "unclear_rate_gap_signed", group="male→female")["value"] == pytest.approx(0.3)
    assert pick(metrics, "unclear_rate_gap_abs", group=None)["value"] == pytest.approx(0.3)
    assert pick(metrics, "control_unclear_rate_gap_signed")["value"] == pytest.approx(0.025)
    assert pick(metrics, "unclear_rate", group="female", stratum="generated")["value"] == pytest.approx(0.4)
    assert pick(metrics, "unclear_rate", group="male", stratum="generated")["value"] == pytest.approx(0.1)
    assert pick(metrics, "unclear_rate", group="male", stratum="observational")["value"] == pytest.approx(0.2)
    # P(yes) is the probe's value, S_yes / (S_yes + S_no): the unclear share does not enter it.
    deltas = [values[f"c{s}"] - values[f"r{s}"] for s in range(SOURCES)]
    assert pick(metrics, "yes_prob_gap_signed", group=None)["value"] == pytest.approx(np.mean(deltas))
    assert pick(metrics, "unclear_rate_gap_signed", group=None)["in_family"]  # compared like any probe gap
    lines = design_lines(assess_findings(metrics), metrics)["unclear"]
    assert "female 40%" in lines[0] and "male 10%" in lines[0] and "answers given" in lines[0]


def test_the_choice_probes_unclear_share_is_read_from_the_predictions():
    audit = AuditSection(kind="vlm", model="m", labels=["doctor", "nurse"], choice_prompt=CHOICE, unclear_option=True,
                         bootstrap_samples=200)
    pool = generated_pool().with_columns(
        pl.col("content_key").map_elements(lambda k: {"r": 0.05, "c": 0.25, "o": 0.0, "k": 0.05}[k[0]],
                                           return_dtype=pl.Float64).alias("unclear"))
    metrics = auditee_metrics(pool, pl.DataFrame(), pl.DataFrame(), audit)
    row = pick(metrics, "unclear_rate_gap_signed", group=None)
    assert row["value"] == pytest.approx(0.2) and row["query"] == CHOICE


def describe(texts: dict[str, list[str]], sentiment: dict[str, float] | None = None,
             embedding: dict[str, list[float]] | None = None) -> pl.DataFrame:
    """Generations of one prompt: per image its samples' texts (and sentiment, embedding by image kind)."""
    rows = []
    for s in range(SOURCES):
        for kind in "orck":
            key = f"{kind}{s}"
            for sample, text in enumerate(texts[kind] if kind in texts else texts["r"]):
                rows.append(dict(content_key=key, prompt=DESCRIBE, sample=sample, seed=sample, text=text, tokens=3,
                                 toxicity=None, sentiment=(sentiment or {}).get(kind),
                                 embedding=(embedding or {}).get(kind)))
    return pl.DataFrame(rows, schema_overrides={"toxicity": pl.Float64, "sentiment": pl.Float64,
                                                "embedding": pl.List(pl.Float32)})


def test_rouge_l_change_by_hand():
    similarity = TextSimilarity()
    # "the doctor smiles" vs "the nurse smiles": LCS 2 of 3 words each, F = 2/3.
    assert rouge_change(["the doctor smiles"], ["The nurse smiles."], similarity) == pytest.approx(1 / 3)
    # Every sample against every sample: LCS 2 of (4, 3) words gives F = 2·(2/3·2/4)/(2/3 + 2/4) = 4/7.
    assert rouge_change(["the doctor smiles", "the doctor smiles kindly"], ["the nurse smiles"], similarity) == \
        pytest.approx(1 - (2 / 3 + 4 / 7) / 2)
    assert rouge_change([""], [""], similarity) == 0.0 and rouge_change(["a"], [""], similarity) == 1.0
    assert rouge_change(["Ärztin lächelt"], ["Ärztin lacht"], similarity) == pytest.approx(0.5)  # words in any script


def test_answer_change_sits_beside_its_control_and_is_called_above_it():
    """Reconstructions and controls answer "the doctor smiles" / "the doctor smiles kindly";
    counterfactuals "the nurse smiles": change 1 − (2/3 + 4/7 + 2/3 + 4/7)/4 = 8/21 per pair; the
    control's two samples against the reconstruction's two: 1 − (1 + 6/7 + 6/7 + 1)/4 = 1/14.
    Embeddings: reconstruction (1, 0), counterfactual (0.6, 0.8), control (1, 0): change 0.4 vs 0.
    Sentiment: reconstruction 0.1, counterfactual 0.5: sentiment_gap_signed +0.4."""
    generations = describe({"r": ["the doctor smiles", "the doctor smiles kindly"], "c": ["the nurse smiles"]},
                           sentiment={"o": 0.0, "r": 0.1, "c": 0.5, "k": 0.1},
                           embedding={"o": [1.0, 0.0], "r": [1.0, 0.0], "c": [0.6, 0.8], "k": [1.0, 0.0]})
    audit = AuditSection(kind="vlm", model="m", generate={"prompts": [DESCRIBE]}, bootstrap_samples=200)
    metrics = auditee_metrics(generated_pool(), pl.DataFrame(), generations, audit)
    rouge = pick(metrics, "answer_change", group=None, measure="rouge_l")
    assert rouge["value"] == pytest.approx(8 / 21) and rouge["query"] == DESCRIBE and rouge["n"] == SOURCES
    assert pick(metrics, "control_answer_change", measure="rouge_l")["value"] == pytest.approx(1 / 14)
    assert pick(metrics, "answer_change", group="male→female", measure="embedding_cosine")["value"] == pytest.approx(0.4)
    assert pick(metrics, "control_answer_change", measure="embedding_cosine")["value"] == pytest.approx(0.0, abs=1e-7)
    assert pick(metrics, "sentiment_gap_signed", group=None)["value"] == pytest.approx(0.4)
    assert pick(metrics, "sentiment_mean", group="female", stratum="generated")["value"] == pytest.approx(0.5)
    findings = decide_findings(metrics)
    called = findings.filter(pl.col("metric") == "answer_change")
    assert called["called"].all() and set(called["reference"]) == {"control"}
    assert rouge["in_family"] and rouge["min_effect"] == pytest.approx(0.01)
    lines = design_lines(assess_findings(metrics), metrics)["answer_change"]
    assert any("(1 − ROUGE-L): 0.381" in line and line.endswith("called") for line in lines), lines


def test_answer_change_without_a_control_is_reported():
    pool = generated_pool().filter(pl.col("variant") != "reconstruction")  # reconstruction off: real vs generated
    generations = describe({"r": ["the doctor smiles"], "o": ["the doctor smiles"], "c": ["the nurse smiles"]})
    metrics = auditee_metrics(pool, pl.DataFrame(), generations, AuditSection(kind="vlm", model="m", generate={"prompts": [DESCRIBE]}))
    row = pick(metrics, "answer_change", group=None, measure="rouge_l")
    assert row["stratum"] == "real_vs_generated" and row["value"] == pytest.approx(1 / 3) and not row["in_family"]
    assert metrics.filter(pl.col("measure") == "embedding_cosine").is_empty()  # no embedder configured
    assert decide_findings(metrics).filter(pl.col("metric") == "answer_change")["verdict"].to_list() == ["reported"] * 2


def test_the_synthetic_shift_is_original_to_reconstruction_and_descriptive():
    """P(yes): originals 0.5, reconstructions 0.2 + 0.01·s: shift = mean(0.2 + 0.01·s − 0.5) = −0.275."""
    metrics = auditee_metrics(generated_pool(), probes_frame(yes_values()), pl.DataFrame(), AUDIT)
    shift = pick(metrics, "synthetic_shift", group=None, measure="yes_prob_gap_signed")
    assert shift["value"] == pytest.approx(-0.275) and shift["ci_high"] < 0
    assert pick(metrics, "synthetic_shift", group="male→male", measure="yes_prob_gap_abs")["value"] == pytest.approx(0.275)
    assert not metrics.filter(pl.col("metric") == "synthetic_shift")["in_family"].any()
    assert set(decide_findings(metrics).filter(pl.col("metric") == "synthetic_shift")["verdict"]) == {"reported"}
    # The label probe: originals 0.1 below their reconstructions in P(doctor) (metric_frames' pools).
    predictions = generated_predictions().with_columns(
        pl.when(pl.col("variant") == "original").then(pl.col("score_doctor") - 0.1).otherwise(pl.col("score_doctor"))
        .alias("score_doctor")).with_columns((1 - pl.col("score_doctor")).alias("score_nurse"))
    table = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AuditSection(bootstrap_samples=200))
    assert pick(table, "synthetic_shift", group=None, label="doctor", measure="prob_gap_signed")["value"] == pytest.approx(0.1)
    assert pick(table, "synthetic_shift", group=None, label="nurse", measure="prob_gap_signed")["value"] == pytest.approx(-0.1)
    assert pick(table, "synthetic_shift", group=None, measure="flip_rate")["value"] == 0.0
    lines = design_lines(assess_findings(table), table)["synthetic_shift"]
    assert "not in them" in lines[0] and any("P('doctor') (prob_gap_signed) moves by 0.1" in line for line in lines), lines
