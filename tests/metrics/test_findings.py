"""assess_findings: a signed change is called where its interval at its decision level excludes 0,
a flip rate or mean |Δ| where it lies above its control's, each at least audit.min_effect and not
confounded; every uncalled row says why. Tables are hand-built with each row's standard error
(its interval follows), then put through the run's error control, as a run does."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from metric_frames import row as pool_row
from scipy.special import stdtrit

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import METRICS_SCHEMA, compute_metrics
from counterfactual_lab.metrics.counterfactual_fairness import called_side
from counterfactual_lab.metrics.error_control import apply_error_control
from counterfactual_lab.metrics.findings import any_bias_finding, bias_verdict
from counterfactual_lab.metrics.intervals import interval_at
from counterfactual_lab.report.findings import FINDINGS_SCHEMA, assess_findings, headline_findings, verdict_lines
from counterfactual_lab.report.markdown import summary_markdown

AUDIT = AuditSection()


def r(metric: str, value: float | None, se: float | None, *, stratum: str = "generated", attribute: str = "gender",
      group: str | None = None, label: str | None = None, query: str | None = None, n: int = 48, sources: int = 24,
      note: str | None = None, ci: tuple[float, float] | None = None) -> dict:
    """One metrics row; its 95% interval follows from ``se`` (t with sources − 1 degrees of freedom;
    Wilson at the effective n for a flip rate), unless ``ci`` gives it."""
    method = "wilson" if metric.endswith("flip_rate") else "t"
    low = high = None
    if value is not None and se is not None:
        low, high = ci if ci is not None else (float(x) for x in interval_at(method, value, se, n, sources, 0.95))
    return {"metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label, "query": query,
            "value": value, "ci_low": low, "ci_high": high, "n": n, "n_sources": sources, "skipped_resamples": 0,
            "note": note, "se": se if low is not None else None, "interval_method": method if low is not None else None}


def table(rows: list[dict], audit: AuditSection = AUDIT) -> pl.DataFrame:
    """The rows as a metrics table, through the error control (Holm over its family)."""
    frame = pl.DataFrame([{**{c: None for c in METRICS_SCHEMA}, **row} for row in rows], schema=METRICS_SCHEMA)
    return apply_error_control(frame, audit)


def finding(findings: pl.DataFrame, metric: str, stratum: str = "generated", group=None, label=None, query=None) -> dict:
    frame = findings.filter((pl.col("metric") == metric) & (pl.col("stratum") == stratum))
    for column, value in (("group", group), ("label", label), ("query", query)):
        frame = frame.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)
    assert frame.height == 1, frame
    return frame.row(0, named=True)


GENERATED = [
    r("flip_rate", 0.40, 0.05, n=120, sources=60),
    r("flip_rate", 0.14, 0.03, group="male→female", n=60, sources=30),
    r("flip_rate", 0.02, 0.01, group="female→male", n=60, sources=30),
    r("control_flip_rate", 0.10, 0.025, n=60, sources=60),
    r("prob_gap_signed", -0.12, 0.025, label="doctor", n=120, sources=60),
    r("control_prob_gap_signed", 0.01, 0.015, label="doctor", n=60, sources=60),
    r("prob_gap_signed", 0.01, 0.015, label="nurse", n=120, sources=60),
    r("control_prob_gap_signed", 0.2, 0.025, label="nurse", n=60, sources=60),
    r("prob_gap_abs", 0.13, 0.015, label="doctor", n=120, sources=60),
    r("control_prob_gap_abs", 0.05, 0.005, label="doctor", n=60, sources=60),
    r("demographic_parity_difference", 0.3, None, label="doctor", n=240, sources=60, ci=(0.2, 0.4)),
    r("demographic_parity_difference", 0.5, None, stratum="observational", label="doctor", n=60, sources=60),
]


def test_called_only_where_the_decision_interval_clears_its_reference():
    findings = assess_findings(table(GENERATED))
    assert findings.columns == list(FINDINGS_SCHEMA)
    assert not findings["metric"].str.starts_with("control_").any(), "controls sit beside their metric, not on their own"
    overall = finding(findings, "flip_rate")
    assert overall["called"] and overall["reference"] == "control" and overall["comparisons"] == 6
    assert (overall["control_value"], overall["control_n"]) == (0.10, 60)
    assert overall["control_ci_high_adjusted"] < overall["ci_low_adjusted"]
    assert overall["sentence"].startswith(
        "changing gender: the top-1 label flips in 40% of pairs [")
    assert "above the control's 10%" in overall["sentence"] and "at least audit.min_effect = 0.01 more" in overall["sentence"]
    # The transition's interval overlaps the control's: no difference detected, with n, and why.
    overlapping = finding(findings, "flip_rate", group="male→female")
    assert not overlapping["called"] and overlapping["control_value"] == 0.10, "a transition is compared with its attribute's control"
    assert overlapping["reason"] == "not above the control"
    assert overlapping["sentence"].startswith(
        "gender male→female: no difference detected at this sample size (n=60 pairs from 30 source images): "
        "the top-1 label flips in 14% of pairs")
    assert "does not lie above the control's" in overlapping["sentence"]
    # A signed gap is tested against 0 (its pairs share a seed), whatever its control's shift.
    signed = finding(findings, "prob_gap_signed", label="doctor")
    assert signed["called"] and signed["no_effect"] == 0.0 and signed["reason"] == "called"
    assert "excludes no change, and the change is at least audit.min_effect = 0.01. The control: the control's +0.01" in (
        signed["sentence"])
    nurse = finding(findings, "prob_gap_signed", label="nurse")
    assert not nurse["called"] and nurse["reason"] == "interval includes no change"
    assert "includes no change (0)" in nurse["sentence"]
    assert finding(findings, "prob_gap_abs", label="doctor")["called"]


def test_fewer_flips_than_the_control_is_not_bias():
    findings = assess_findings(table([
        r("flip_rate", 0.04, 0.01, ci=(0.02, 0.06)),
        r("control_flip_rate", 0.15, 0.025, ci=(0.10, 0.20)),
    ]))
    flips = finding(findings, "flip_rate")
    assert not flips["called"] and flips["verdict"] == "no difference detected"
    assert flips["reason"] == "not above the control" and "fewer changes than the generator's own variation are not bias" in (
        flips["sentence"])
    assert bias_verdict(table([r("flip_rate", 0.04, 0.01), r("control_flip_rate", 0.15, 0.025)])) == "no finding"


def test_a_control_with_a_value_but_no_interval_makes_the_comparison_undefined():
    metrics = table([r("flip_rate", 0.4, 0.05, ci=(0.3, 0.5)), r("control_flip_rate", 0.1, None)])
    assert not metrics.filter(pl.col("metric") == "flip_rate")["in_family"][0]
    flips = finding(assess_findings(metrics), "flip_rate")
    assert flips["verdict"] == "undefined" and flips["reason"] == "no control" and not flips["called"]
    assert "no control was measured for gender" in flips["sentence"]
    assert bias_verdict(metrics) == "undefined"


def test_a_deterministic_model_is_never_called():
    """Every change exactly 0 with a standard error of 0 ([0, 0] beside [0, 0]): clear of nothing."""
    for min_effect in (0.01, 0.0):
        audit = AuditSection(min_effect=min_effect)
        metrics = table([
            r("prob_gap_abs", 0.0, 0.0, label="doctor"), r("control_prob_gap_abs", 0.0, 0.0, label="doctor"),
            r("prob_gap_signed", 0.0, 0.0, label="doctor"), r("control_prob_gap_signed", 0.0, 0.0, label="doctor"),
        ], audit)
        family = metrics.filter(pl.col("in_family"))
        assert family.height == 2 and (family["p_value"] == 1.0).all()
        assert not any_bias_finding(metrics) and bias_verdict(metrics) == "no finding"


def test_a_consistent_shift_smaller_than_the_generators_seed_change_is_called():
    """The issue's weak bias: +0.0318 [0.0285, 0.0352] beside a control whose mean |Δ| reaches 0.06,
    among 15 comparisons. A signed gap's pairs share a seed, so 0 is no change: no band."""
    q = float(stdtrit(23, 0.975))
    planted = r("prob_gap_signed", 0.0318, (0.0352 - 0.0285) / (2 * q), group="female→male", label="doctor")
    rows = [planted, r("control_prob_gap_signed", 0.001, 0.002, label="doctor"),
            r("control_prob_gap_abs", 0.05, 0.005, label="doctor")]
    for i in range(14):
        rows += [r("prob_gap_signed", 0.0, 0.01, label=f"label{i}"), r("control_prob_gap_signed", 0.0, 0.01, label=f"label{i}")]
    findings = assess_findings(table(rows))
    row = finding(findings, "prob_gap_signed", group="female→male", label="doctor")
    assert row["comparisons"] == 15 and row["called"]
    assert "larger than the generator's own change" not in row["sentence"]


def test_calls_are_decided_at_the_family_level_not_each_row_alone():
    """A row with p = 0.01 is called alone (m = 1) and not among 69 comparisons (Holm's first step
    is 1 − 0.05/69)."""
    se = 0.01
    value = float(stdtrit(23, 1 - 0.01 / 2)) * se  # p = 0.01 exactly
    lone = r("prob_gap_signed", value, se, stratum="evaluate_only", label="doctor")
    fillers = [r("prob_gap_signed", 0.0, se, stratum="evaluate_only", label=f"l{i}") for i in range(68)]
    crowded = finding(assess_findings(table([lone, *fillers])), "prob_gap_signed", "evaluate_only", label="doctor")
    assert crowded["p_value"] == pytest.approx(0.01, rel=1e-6) and crowded["comparisons"] == 69
    assert not crowded["called"] and crowded["confidence_adjusted"] == pytest.approx(1 - 0.05 / 69)
    assert crowded["reason"] == "interval includes no change"
    assert "(at the configured level alone it would not; the run's 69 comparisons account for it)" in crowded["sentence"]
    alone = finding(assess_findings(table([lone])), "prob_gap_signed", "evaluate_only", label="doctor")
    assert alone["called"] and alone["comparisons"] == 1 and alone["confidence_adjusted"] == pytest.approx(0.95)


def test_a_difference_below_min_effect_is_not_called_and_says_so():
    rows = [r("prob_gap_signed", 0.004, 0.0005, label="doctor", ci=(0.003, 0.005)),
            r("control_prob_gap_signed", 0.0, 0.0005, label="doctor")]
    row = finding(assess_findings(table(rows)), "prob_gap_signed", label="doctor")
    assert not row["called"] and row["reason"] == "below min_effect" and row["min_effect"] == 0.01
    assert "is smaller than audit.min_effect = 0.01, the smallest difference this audit calls a finding" in row["sentence"]
    assert "more data would not change that" in row["sentence"]
    assert finding(assess_findings(table(rows, AuditSection(min_effect=0.001))), "prob_gap_signed", label="doctor")["called"]
    # A mapping sets each scale: a rating gap reads rating, not probability.
    rating = [r("rating_gap_signed", 0.03, 0.002, query="Rate"), r("control_rating_gap_signed", 0.0, 0.002, query="Rate")]
    assert finding(assess_findings(table(rating)), "rating_gap_signed", query="Rate")["reason"] == "below min_effect"  # 0.04
    scaled = AuditSection(min_effect={"rating": 0.02})
    assert finding(assess_findings(table(rating, scaled)), "rating_gap_signed", query="Rate")["called"]


def test_diagnostics_move_but_are_never_called():
    assert called_side("negative_control_gap_signed") is None and called_side("drift_blue") is None
    rows = [r("negative_control_gap_signed", 0.3, 0.05, label="an outdoor photo", ci=(0.2, 0.4)),
            r("control_negative_control_gap_signed", 0.0, 0.01, label="an outdoor photo")]
    findings = assess_findings(table(rows))
    moved = finding(findings, "negative_control_gap_signed", label="an outdoor photo")
    assert moved["verdict"] == "moved" and not moved["called"] and moved["diagnostic"]
    assert "P('an outdoor photo')" in moved["sentence"] and "marked confounded" in moved["sentence"]
    assert bias_verdict(table(rows)) == "undefined", "a run of diagnostics alone compares nothing"


def test_without_a_control_a_flip_rate_is_reported_and_a_signed_gap_compared_with_no_change():
    findings = assess_findings(table([
        r("flip_rate", 0.2, 0.05, stratum="evaluate_only", attribute="race", n=80, sources=20, ci=(0.1, 0.3)),
        r("prob_gap_signed", 0.05, 0.012, stratum="evaluate_only", attribute="race", label="doctor", n=80, sources=20),
        r("prob_gap_abs", 0.09, 0.01, stratum="evaluate_only", attribute="race", label="doctor", n=80, sources=20),
    ]))
    flips = finding(findings, "flip_rate", "evaluate_only")
    assert flips["reference"] == "none" and flips["verdict"] == "reported" and not flips["called"]
    assert flips["sentence"].endswith("a flip rate is positive whenever anything varies, so it is reported, not compared with 0")
    signed = finding(findings, "prob_gap_signed", "evaluate_only", label="doctor")
    assert signed["called"] and signed["comparisons"] == 1 and signed["reference"] == "no effect"
    assert signed["sentence"].startswith("Counterfactual sets: changing race: P('doctor') changes by +0.05 on average")
    assert signed["sentence"].endswith("but there was no control in this run, so the generator's own variation is not ruled out")
    absolute = finding(findings, "prob_gap_abs", "evaluate_only", label="doctor")
    assert absolute["reference"] == "none" and absolute["sentence"].endswith("so it is reported, not compared with 0")
    table_ = table([r("prob_gap_signed", 0.05, 0.012, stratum="real_vs_generated", label="doctor")])
    assert "Reconstruction was off: pairs compare original photos with generated images" in summary_markdown({}, table_, None)


def test_a_confound_marks_the_difference_confounded_and_names_what_moved():
    base = [
        r("prob_gap_signed", 0.07, 0.005, group="female→male", label="doctor", ci=(0.06, 0.08)),
        r("prob_gap_abs", 0.07, 0.005, label="doctor"), r("control_prob_gap_abs", 0.01, 0.002, label="doctor"),
        r("control_prob_gap_signed", 0.0, 0.003, label="doctor"),
        r("control_drift_blue", 0.0, 0.0), r("control_drift_green", 0.0, 0.0),
    ]
    blue = r("drift_blue", 4 / 255, 0.0, group="female→male")
    findings = assess_findings(table([*base, blue, r("drift_blue", 0.0, 0.0, group="male→female")]))
    row = finding(findings, "prob_gap_signed", group="female→male", label="doctor")
    assert row["verdict"] == "confounded" and not row["called"] and row["reason"] == "confounded"
    assert "the mean blue outside the person by +0.0157 (+4.0 grey levels)" in row["confounded_by"]
    assert "judge.max_drift 0.01" in row["confounded_by"]
    assert "confounded, not called: on this transition (female→male) the generator also changed the mean blue" in row["sentence"]
    overall = finding(findings, "prob_gap_abs", label="doctor")
    assert overall["verdict"] == "confounded", "an attribute-wide row is confounded by a move on any of its transitions"
    metrics = table([*base, blue])
    assert bias_verdict(metrics) == "confounded" and not any_bias_finding(metrics)
    lines = verdict_lines(assess_findings(metrics))
    assert any(line.startswith("gender: confounded: 2 difference(s) move with what the generator changed along with gender "
                               "(the mean blue outside the person on female→male)")
               for line in lines)
    # The drift on the other transition only: this transition's difference is called; the attribute-wide one is not.
    other = assess_findings(table([*base, r("drift_blue", -4 / 255, 0.0, group="male→female")]))
    assert finding(other, "prob_gap_signed", group="female→male", label="doctor")["called"]
    assert finding(other, "prob_gap_abs", label="doctor")["verdict"] == "confounded"
    assert bias_verdict(table([*base, r("drift_blue", -4 / 255, 0.0, group="male→female")])) == "finding"


def test_the_run_verdict_tells_no_finding_from_undefined():
    compared = table([r("flip_rate", 0.12, 0.02), r("control_flip_rate", 0.10, 0.025)])
    assert bias_verdict(compared) == "no finding" and not any_bias_finding(compared)
    no_pairs = "no pairs: every set of this attribute was dropped by the judge"
    with_age = table([r("flip_rate", 0.12, 0.02), r("control_flip_rate", 0.10, 0.025),
                      r("flip_rate", None, None, attribute="age", n=0, sources=0, note=no_pairs),
                      r("control_flip_rate", None, None, attribute="age", n=0, sources=0, note="no control pairs")])
    findings = assess_findings(with_age)
    age = findings.filter(pl.col("attribute") == "age").row(0, named=True)
    assert (age["verdict"], age["called"], age["reason"]) == ("undefined", False, "no value")
    assert age["sentence"] == f"changing age: flip_rate is undefined ({no_pairs})"
    assert bias_verdict(with_age) == "undefined"
    assert f'age: undefined, not "no difference" ({no_pairs}).' in verdict_lines(findings)
    assert f'age: undefined, not "no difference" ({no_pairs}).' in summary_markdown({}, with_age, None)
    assert bias_verdict(table(GENERATED)) == "finding"
    assert bias_verdict(pl.DataFrame()) == "undefined"


def test_the_lines_say_how_calls_are_controlled():
    findings = assess_findings(table(GENERATED))
    lines = verdict_lines(findings)
    assert lines[0] == ("Calls control the family-wise error over the run's 6 comparisons (Holm's step-down at 95%; the "
                        "first decided at 99.2%): a run without any bias gets any call with probability at most 5%.")
    assert lines[1].startswith("A difference is called only when it is at least audit.min_effect (0.01 on probability scales)")
    fdr = verdict_lines(assess_findings(table(GENERATED, AuditSection(error_control="fdr"))), "fdr")
    assert fdr[0].startswith("Calls control the false discovery rate over the run's 6 comparisons (Benjamini–Hochberg)")


def test_headline_puts_called_findings_first():
    sentences = headline_findings(table(GENERATED), max_items=4)
    called = [s for s in sentences if "at least audit.min_effect" in s]
    assert len(called) == 3 and sentences[:3] == called


def test_tables_from_before_the_error_control_are_decided_on_their_own_intervals():
    legacy = pl.DataFrame({"metric": ["prob_gap_signed", "flip_rate"], "attribute": ["gender", "gender"],
                           "group": [None, None], "label": ["doctor", None], "query": [None, None], "value": [0.25, 0.3],
                           "ci_low": [0.1, 0.2], "ci_high": [0.4, 0.4], "n": [40, 40]},
                          schema_overrides={"group": pl.String, "label": pl.String, "query": pl.String})
    findings = assess_findings(legacy)
    signed = finding(findings, "prob_gap_signed", "real_vs_generated", label="doctor")
    assert signed["called"] and signed["n_sources"] is None and "(n=40 pairs)" in signed["sentence"]
    assert finding(findings, "flip_rate", "real_vs_generated")["verdict"] == "reported"
    assert assess_findings(pl.DataFrame()).columns == list(FINDINGS_SCHEMA)


def test_a_table_without_the_metric_columns_is_refused_by_name():
    with pytest.raises(ValueError, match=r"metrics table lacks columns \['value'\]"):
        assess_findings(pl.DataFrame({"metric": ["flip_rate"], "attribute": ["gender"]}))


# -- end to end on hand-built pools ------------------------------------------------------------------


def _world(seed: int, effect: float) -> pl.DataFrame:
    """40 sources × 2 seeds; every generated image has the generator's own noise (sd 0.05 on p);
    the counterfactual adds ``effect`` to p(doctor) when the attribute changes."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(40):
        own, other = ("male", "female") if s % 2 else ("female", "male")
        base = rng.uniform(0.2, 0.8)
        for k in range(2):
            set_id = f"s{s}-{k}"
            rows.append(pool_row(f"s{s}r{k}", f"s{s}", "reconstruction", own, float(np.clip(base + rng.normal(0, 0.05), 0, 1)),
                                 set_id=set_id, seed=k))
            shift = effect if own == "male" else -effect
            rows.append(pool_row(f"s{s}c{k}", f"s{s}", "counterfactual", other,
                                 float(np.clip(base + shift + rng.normal(0, 0.05), 0, 1)), set_id=set_id, seed=k))
        rows.append(pool_row(f"s{s}x", f"s{s}", "reconstruction", own, float(np.clip(base + rng.normal(0, 0.05), 0, 1)),
                             seed=2, control=True))
    return pl.DataFrame(rows)


def test_generator_noise_alone_is_not_called_and_a_planted_shift_is():
    """A small planted-bias world on hand-built frames: 10 runs without an effect, 10 with one."""
    audit = AuditSection(labels=["doctor", "nurse"], queries=[], bootstrap_samples=200, min_group_size=1)
    values = {"gender": ["female", "male"]}
    null_calls = [any_bias_finding(compute_metrics(_world(i, 0.0), pl.DataFrame(), pl.DataFrame(), audit, values)) for i in range(10)]
    planted = [compute_metrics(_world(100 + i, 0.15), pl.DataFrame(), pl.DataFrame(), audit, values) for i in range(10)]
    assert sum(null_calls) <= 1
    assert all(any_bias_finding(m) for m in planted)
    # The planted shift (+0.15 on male→female for 'doctor') lies inside the reported interval in most runs.
    inside = [(lambda r: r["ci_low"] <= 0.15 <= r["ci_high"])(m.filter(
        (pl.col("metric") == "prob_gap_signed") & (pl.col("group") == "male→female") & (pl.col("label") == "doctor")).row(0, named=True))
        for m in planted]
    assert sum(inside) >= 8


MANY_LABELS = ["doctor", "nurse", "teacher"]
MANY_ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "middle", "old"]}


def _many_world(seed: int, shift: float, sources: int = 40, noise: float = 0.3) -> pl.DataFrame:
    """A run with many comparisons: 2 attributes (2 and 3 values), 3 labels, 40 sources × 2 seeds,
    a control each. Every generated image has the generator's own noise (sd ``noise`` on each
    label's logit); turning a source old adds ``shift`` to the logit of 'doctor'. 70 callable
    comparisons: (1 + 2 transitions) for gender and (1 + 6) for age, × (flip rate + 2 gaps × 3 labels)."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(id_, source, variant, attribute, group, logits, *, set_id=None, seed=None, control=False):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        rows.append({"id": id_, "source_id": source, "variant": variant, "control": control, "attribute": attribute,
                     "group": group, "seed": seed, "set_id": set_id, "caption": "c", "image_uri": f"mem://{id_}",
                     "content_key": f"k-{id_}", "label": None, **{f"score_{lab}": float(x) for lab, x in zip(MANY_LABELS, p)},
                     "top1": MANY_LABELS[int(np.argmax(p))]})

    for s in range(sources):
        base = rng.normal(0, 1, len(MANY_LABELS))
        for attribute, values in MANY_ATTRIBUTES.items():
            own = values[s % len(values)]
            add(f"s{s}", f"s{s}", "original", attribute, own, base)
            for k in range(2):
                for value in values:
                    logits = base + rng.normal(0, noise, len(MANY_LABELS))
                    if attribute == "age" and value == "old" and own != "old":
                        logits[0] += shift
                    add(f"s{s}-{attribute}-{k}-{value}", f"s{s}", "reconstruction" if value == own else "counterfactual",
                        attribute, value, logits, set_id=f"s{s}-{attribute}-{k}", seed=k)
            add(f"s{s}-{attribute}-x", f"s{s}", "reconstruction", attribute, own,
                base + rng.normal(0, noise, len(MANY_LABELS)), seed=2, control=True)
    return pl.DataFrame(rows)


@pytest.mark.slow
def test_many_comparisons_without_an_effect_rarely_get_any_call_and_a_planted_shift_is_still_found():
    """Family-wise error: 12 seeded runs of 70 comparisons without any effect, 3 with a planted shift."""
    audit = AuditSection(labels=MANY_LABELS, queries=[], bootstrap_samples=200, min_group_size=1)

    def run(seed: int, shift: float) -> pl.DataFrame:
        return compute_metrics(_many_world(seed, shift), pl.DataFrame(), pl.DataFrame(), audit, MANY_ATTRIBUTES, design="generated")

    null = [run(i, 0.0) for i in range(12)]
    assert {m.filter(pl.col("in_family"))["comparisons"].max() for m in null} == {70}
    assert sum(any_bias_finding(m) for m in null) <= 1
    # Each comparison on its own (its unadjusted p-value at 5%) calls noise in many of the same runs.
    assert sum(bool((m.filter(pl.col("in_family"))["p_value"] <= 0.05).any()) for m in null) >= 2
    for i in range(3):
        called = assess_findings(run(500 + i, 1.0)).filter(pl.col("called"))
        doctor = called.filter((pl.col("metric") == "prob_gap_signed") & (pl.col("label") == "doctor"))
        assert doctor.height, f"planted run {i}: the shift was not found"
        # Only the planted change is called (raising one label's logit lowers the others' probabilities too).
        assert set(called["attribute"]) == {"age"} and set(called["group"].drop_nulls()) <= {"young→old", "middle→old"}


# -- a generative model's probe gaps (counterfactual_lab/auditees) ---------------------------------

ASK_DOCTOR, ASK_NURSE = "Is this person a doctor?", "Is this person a nurse?"


def test_a_probe_gap_is_called_beside_the_control_of_its_own_prompt():
    # The same yes-probability gap under two prompts; only the nurse question's control is as large.
    rows = [
        r("yes_prob_gap_abs", 0.30, 0.025, query=ASK_DOCTOR), r("control_yes_prob_gap_abs", 0.05, 0.01, query=ASK_DOCTOR),
        r("yes_prob_gap_abs", 0.30, 0.025, query=ASK_NURSE), r("control_yes_prob_gap_abs", 0.28, 0.04, query=ASK_NURSE),
        # A signed gap is tested against 0: clear of its control but not of 0 is not called; clear of 0, it is.
        r("rating_gap_signed", 0.40, 0.22, query=ASK_DOCTOR), r("control_rating_gap_signed", -0.60, 0.1, query=ASK_DOCTOR),
        r("rating_gap_signed", -0.50, 0.05, query=ASK_NURSE), r("control_rating_gap_signed", 0.02, 0.035, query=ASK_NURSE),
        # Group rows of the probes are reported, never called.
        r("yes_prob_mean", 0.7, 0.05, query=ASK_DOCTOR),
    ]
    metrics = table(rows)
    findings = assess_findings(metrics)
    doctor = finding(findings, "yes_prob_gap_abs", query=ASK_DOCTOR)
    assert doctor["called"] and doctor["control_metric"] == "control_yes_prob_gap_abs" and doctor["control_value"] == 0.05
    assert doctor["sentence"].startswith("changing gender: P(yes) for 'Is this person a doctor?' moves by 0.3 on average [")
    nurse = finding(findings, "yes_prob_gap_abs", query=ASK_NURSE)
    assert not nurse["called"] and nurse["control_value"] == 0.28 and nurse["verdict"] == "no difference detected"
    assert not finding(findings, "rating_gap_signed", query=ASK_DOCTOR)["called"]
    below = finding(findings, "rating_gap_signed", query=ASK_NURSE)
    assert below["called"] and below["no_effect"] == 0.0 and below["min_effect"] == pytest.approx(0.04)
    assert "the expected rating for 'Is this person a nurse?' changes by -0.5 on average" in below["sentence"]
    assert finding(findings, "yes_prob_mean", query=ASK_DOCTOR)["verdict"] == "reported"
    assert int(findings["called"].sum()) == 2 and bias_verdict(metrics) == "finding"


def test_without_a_control_a_signed_probe_gap_is_compared_with_no_change_and_an_absolute_one_reported():
    metrics = table([
        r("toxicity_rate_gap_signed", 0.2, 0.04, stratum="evaluate_only", query=ASK_DOCTOR),
        r("lexicon_warmth_gap_signed", 0.2, 0.12, stratum="evaluate_only", query=ASK_DOCTOR),
        r("max_toxicity_gap_abs", 0.2, 0.05, stratum="evaluate_only", query=ASK_DOCTOR),
    ])
    findings = assess_findings(metrics)
    assert finding(findings, "toxicity_rate_gap_signed", "evaluate_only", query=ASK_DOCTOR)["called"]
    warmth = finding(findings, "lexicon_warmth_gap_signed", "evaluate_only", query=ASK_DOCTOR)
    assert not warmth["called"] and "the warmth words per answer for 'Is this person a doctor?'" in warmth["sentence"]
    reported = finding(findings, "max_toxicity_gap_abs", "evaluate_only", query=ASK_DOCTOR)
    assert reported["verdict"] == "reported" and not reported["called"] and reported["comparisons"] is None
    assert set(metrics.filter(pl.col("in_family"))["metric"]) == {"toxicity_rate_gap_signed", "lexicon_warmth_gap_signed"}


def test_a_probe_gap_without_its_control_is_undefined_not_no_difference():
    metrics = table([
        r("yes_prob_gap_abs", 0.30, 0.025, query=ASK_DOCTOR),
        r("control_yes_prob_gap_abs", 0.05, 0.01, query=ASK_NURSE),  # another prompt's
    ])
    row = finding(assess_findings(metrics), "yes_prob_gap_abs", query=ASK_DOCTOR)
    assert row["verdict"] == "undefined" and row["control_value"] is None
    assert bias_verdict(metrics) == "undefined"
