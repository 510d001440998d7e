"""What labels say: verdicts, review.parquet, and the review rows of metrics.parquet, on cases worked by hand."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest

from counterfactual_lab.metrics.findings import decide_findings
from counterfactual_lab.metrics.intervals import IntervalSettings, wilson_interval
from counterfactual_lab.metrics.schema import METRICS_SCHEMA
from counterfactual_lab.review.figures import (
    REVIEW_SCHEMA,
    label_verdict,
    review_metric_rows,
    review_table,
)
from counterfactual_lab.review.labels import LABELS_SCHEMA
from counterfactual_lab.review.sets import MEMBERS_SCHEMA

SETTINGS = IntervalSettings(n_resamples=200, seed=0)
# member: (attribute, the judge passed it)
MEMBERS = {"m1": ("gender", True), "m2": ("gender", True), "m3": ("age", True), "m4": ("age", False),
           "m5": ("gender", False), "m6": ("age", True)}
ANA = {"m1": ("yes", "none"), "m2": ("no", "none"), "m3": ("yes", "background"), "m4": ("yes", "none"),
       "m5": ("no", "identity"), "m6": ("cant_tell", "none")}
BOB = {"m1": ("yes", "none"), "m2": ("no", "none"), "m3": ("yes", "none"), "m4": ("yes", "none"),
       "m5": ("no", "none")}


def members() -> pl.DataFrame:
    rows = [{"set_id": f"set-{m}", "member": m, "source_id": f"src-{m}", "attribute": attribute, "source_value": "a",
             "target_value": "b", "judge_kept": passed, "judge_pass": passed,
             "drop_reason": None if passed else "below_direction_threshold"} for m, (attribute, passed) in MEMBERS.items()]
    return pl.DataFrame(rows, schema=MEMBERS_SCHEMA)


def labels(**by_reviewer: dict) -> pl.DataFrame:
    now = datetime.now(timezone.utc)
    rows = [{"reviewer": reviewer, "set_id": f"set-{m}", "member": m, "target_shown": t, "other_change": o,
             "note": None, "answered_at": now, "sample_seed": 0}
            for reviewer, answers in by_reviewer.items() for m, (t, o) in answers.items()]
    return pl.DataFrame(rows, schema=LABELS_SCHEMA)


def row(metrics: pl.DataFrame, metric: str, attribute: str | None = None, label: str | None = None) -> dict:
    found = metrics.filter((pl.col("metric") == metric)
                           & (pl.col("attribute").is_null() if attribute is None else pl.col("attribute") == attribute)
                           & (pl.col("label").is_null() if label is None else pl.col("label") == label))
    assert found.height == 1, (metric, attribute, label)
    return found.row(0, named=True)


def test_a_verdict_needs_the_target_shown_and_nothing_else_changed():
    assert label_verdict("yes", "none") == "valid"
    assert label_verdict("no", "none") == label_verdict("yes", "identity") == label_verdict("cant_tell", "unusable") == "invalid"
    assert label_verdict("cant_tell", "none") == "undecided"


def test_one_reviewer_gives_validity_the_judges_error_rates_and_kappa():
    table = review_table(labels(ana=ANA), members(), excluded_sets=["set-m2"])
    assert table.schema == pl.Schema(REVIEW_SCHEMA) and table.height == 6
    verdicts = dict(zip(table["member"], table["verdict"]))
    assert verdicts == {"m1": "valid", "m2": "invalid", "m3": "invalid", "m4": "valid", "m5": "invalid", "m6": "undecided"}
    assert set(table.filter(pl.col("set_rejected"))["member"]) == {"m2", "m3", "m5"}
    assert table.filter(pl.col("excluded"))["member"].to_list() == ["m2"]

    metrics = review_metric_rows(table, labels(ana=ANA), members(), SETTINGS)
    assert metrics.schema == pl.Schema(METRICS_SCHEMA) and set(metrics["stratum"]) == {"review"}
    validity = row(metrics, "human_validity_rate")  # decided: m1 m4 valid; m2 m3 m5 invalid (m6 can't tell)
    assert validity["value"] == pytest.approx(2 / 5) and validity["n"] == 5 and validity["n_sources"] == 5
    assert (validity["ci_low"], validity["ci_high"]) == pytest.approx(wilson_interval(2, 5, 0.95))
    assert "few labels (n = 5)" in validity["note"]
    assert row(metrics, "judge_false_accept_rate")["value"] == pytest.approx(2 / 3)  # passed m1 m2 m3: m2, m3 invalid
    assert row(metrics, "judge_false_reject_rate")["value"] == pytest.approx(1 / 2)  # failed m4 m5: m4 valid
    # judge V V V I I, people V I I V I: p_o = 2/5, p_e = 3/5·2/5 + 2/5·3/5 = 12/25, κ = (10/25 − 12/25)/(13/25)
    kappa = row(metrics, "judge_human_agreement")
    assert kappa["value"] == pytest.approx(-2 / 13) and kappa["ci_low"] <= kappa["value"] <= kappa["ci_high"]
    assert row(metrics, "human_validity_rate", "gender")["value"] == pytest.approx(1 / 3)  # m1 valid; m2, m5 not
    alpha = row(metrics, "inter_rater_agreement")
    assert alpha["value"] is None and "two reviewers" in alpha["note"]


def test_two_reviewers_give_krippendorffs_alpha_and_a_majority_verdict():
    both = labels(ana=ANA, bob=BOB)
    table = review_table(both, members())
    # m3: ana invalid (background), bob valid: a tie, left out of the figures
    assert dict(zip(table["member"], table["verdict"]))["m3"] == "undecided"
    assert table.filter(pl.col("member") == "m1")["n_reviewers"].item() == 2
    metrics = review_metric_rows(table, both, members(), SETTINGS)
    assert row(metrics, "human_validity_rate")["value"] == pytest.approx(2 / 4)
    # verdict units V V | I I | I V | V V | I I: o_VV = o_II = 4, o_VI = o_IV = 1, n = 10;
    # D_o = 2/10, D_e = (100 − 50)/90, α = 1 − 0.2·90/50 = 0.64
    assert row(metrics, "inter_rater_agreement")["value"] == pytest.approx(0.64)
    assert row(metrics, "inter_rater_agreement", label="other_change")["value"] is not None


def test_kappa_is_undefined_with_the_reason_when_the_judge_passed_everything():
    passed = members().with_columns(pl.lit(True).alias("judge_pass"))
    metrics = review_metric_rows(review_table(labels(ana=ANA), passed), labels(ana=ANA), passed, SETTINGS)
    kappa = row(metrics, "judge_human_agreement")
    assert kappa["value"] is None and "passed every reviewed counterfactual" in kappa["note"]
    assert row(metrics, "judge_false_reject_rate")["value"] is None


def test_review_rows_are_never_findings_about_the_model_under_audit():
    table = review_table(labels(ana=ANA), members())
    assert decide_findings(review_metric_rows(table, labels(ana=ANA), members(), SETTINGS)).is_empty()
