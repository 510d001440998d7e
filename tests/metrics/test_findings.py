"""assess_findings: a difference is called only where its interval excludes its control's (or no
change, where there was no control); each finding carries its control and a sentence with n."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.report.findings import FINDINGS_SCHEMA, assess_findings
from counterfactual_lab.metrics.findings import any_bias_finding, bias_verdict
from counterfactual_lab.report.markdown import summary_markdown
from counterfactual_lab.report.findings import headline_findings, verdict_lines
from counterfactual_lab.metrics import METRICS_SCHEMA, compute_metrics
from counterfactual_lab.metrics.schema import FAMILY_WISE_SCHEMA
from metric_frames import row

FAMILY_COLUMNS = list(FAMILY_WISE_SCHEMA)


def metrics_table(rows: list[tuple], family: dict[tuple, tuple[float, float]] | None = None, comparisons: int = 70
                  ) -> pl.DataFrame:
    """(metric, stratum, attribute, group, label, value, ci_low, ci_high, n, n_sources[, note]) tuples;
    ``family``: {(metric, group, label): (ci_low_adjusted, ci_high_adjusted)} at 1 − 0.05/``comparisons``."""
    full = []
    for r in rows:
        metric, stratum, attribute, group, label, value, low, high, n, sources, *note = r
        adjusted = (family or {}).get((metric, group, label))
        full.append({"metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label,
                     "query": None, "value": value, "ci_low": low, "ci_high": high, "n": n, "n_sources": sources,
                     "skipped_resamples": 0, "note": note[0] if note else None,
                     "ci_low_adjusted": adjusted[0] if adjusted else None, "ci_high_adjusted": adjusted[1] if adjusted else None,
                     "confidence_adjusted": 1 - 0.05 / comparisons if adjusted else None,
                     "comparisons": comparisons if adjusted else None})
    return pl.DataFrame(full, schema=METRICS_SCHEMA)


def finding(findings: pl.DataFrame, metric: str, stratum: str = "generated", group=None, label=None) -> dict:
    frame = findings.filter((pl.col("metric") == metric) & (pl.col("stratum") == stratum))
    frame = frame.filter(pl.col("group").is_null() if group is None else pl.col("group") == group)
    frame = frame.filter(pl.col("label").is_null() if label is None else pl.col("label") == label)
    assert frame.height == 1, frame
    return frame.row(0, named=True)


GENERATED = metrics_table([
    ("flip_rate", "generated", "gender", None, None, 0.40, 0.30, 0.50, 120, 60),
    ("flip_rate", "generated", "gender", "male→female", None, 0.14, 0.08, 0.20, 60, 30),
    ("flip_rate", "generated", "gender", "female→male", None, 0.02, 0.00, 0.06, 60, 30),
    ("control_flip_rate", "generated", "gender", None, None, 0.10, 0.05, 0.15, 60, 60),
    ("prob_gap_signed", "generated", "gender", None, "doctor", -0.12, -0.18, -0.07, 120, 60),
    ("control_prob_gap_signed", "generated", "gender", None, "doctor", 0.01, -0.02, 0.04, 60, 60),
    ("prob_gap_signed", "generated", "gender", None, "nurse", 0.01, -0.02, 0.04, 120, 60),
    ("control_prob_gap_signed", "generated", "gender", None, "nurse", 0.2, 0.15, 0.25, 60, 60),
    ("prob_gap_abs", "generated", "gender", None, "doctor", 0.13, 0.10, 0.16, 120, 60),
    ("control_prob_gap_abs", "generated", "gender", None, "doctor", 0.05, 0.04, 0.06, 60, 60),
    ("demographic_parity_difference", "generated", "gender", None, "doctor", 0.3, 0.2, 0.4, 240, 60),
    ("demographic_parity_difference", "observational", "gender", None, "doctor", 0.5, 0.4, 0.6, 60, 60),
])


def test_called_only_where_the_interval_excludes_the_controls():
    findings = assess_findings(GENERATED)
    assert findings.columns == list(FINDINGS_SCHEMA)
    assert not findings["metric"].str.starts_with("control_").any(), "controls sit beside their metric, not on their own"
    overall = finding(findings, "flip_rate")
    assert overall["called"] and overall["reference"] == "control"
    assert (overall["control_value"], overall["control_ci_low"], overall["control_ci_high"], overall["control_n"]) == (0.10, 0.05, 0.15, 60)
    assert overall["sentence"] == (
        "changing gender: the top-1 label flips in 40% of pairs [30%, 50%] (n=120 pairs from 60 source images), "
        "above the control's 10% [5%, 15%] (same source and value, another seed; n=60 pairs)"
    )
    # [8%, 20%] overlaps the control's [5%, 15%]: no difference detected, with n.
    overlapping = finding(findings, "flip_rate", group="male→female")
    assert not overlapping["called"] and overlapping["control_value"] == 0.10, "a transition is compared with its attribute's control"
    assert overlapping["sentence"].startswith(
        "gender male→female: no difference detected at this sample size (n=60 pairs from 30 source images): "
        "the top-1 label flips in 14% of pairs [8%, 20%] vs the control's 10%")
    # Fewer flips than the control is not bias.
    assert not finding(findings, "flip_rate", group="female→male")["called"]
    # The signed gap counts either way, beyond ±0.06: the most the control moves (its signed
    # interval [−0.02, 0.04] and the top of its mean |Δ|, 0.06). [−0.18, −0.07] lies below −0.06.
    signed = finding(findings, "prob_gap_signed", label="doctor")
    assert signed["called"] and signed["no_effect"] == 0.0 and signed["control_band"] == 0.06
    assert ("changes by -0.12 on average [-0.18, -0.07] (n=120 pairs from 60 source images), larger than the "
            "generator's own change either way (±0.06: the control's +0.01") in signed["sentence"]
    # Away from the control's shift (made at another seed) but not from 0: not called.
    assert not finding(findings, "prob_gap_signed", label="nurse")["called"]
    # The mean |Δ| [0.10, 0.16] lies above its control's [0.04, 0.06].
    assert finding(findings, "prob_gap_abs", label="doctor")["called"]


def test_a_signed_gap_between_zero_and_its_control_is_not_called():
    """Clear of 0 and clear of the control, but on the control's side of 0 and smaller: the
    generator alone moves the answer more than the change does (a random VLM's P(yes) moved by
    +1.2e-5 against a control of +0.004). Beyond the control, on either side, it is called."""
    table = metrics_table([
        ("prob_gap_signed", "generated", "gender", None, "doctor", 1.2e-5, 1.1e-6, 2.0e-5, 120, 60),
        ("control_prob_gap_signed", "generated", "gender", None, "doctor", 0.0037, 0.0033, 0.0042, 60, 60),
        ("prob_gap_signed", "generated", "gender", None, "nurse", 0.01, 0.006, 0.014, 120, 60),
        ("control_prob_gap_signed", "generated", "gender", None, "nurse", 0.0037, 0.0033, 0.0042, 60, 60),
        ("prob_gap_signed", "generated", "gender", None, "teacher", -0.01, -0.014, -0.006, 120, 60),
        ("control_prob_gap_signed", "generated", "gender", None, "teacher", 0.0037, 0.0033, 0.0042, 60, 60),
    ])
    findings = assess_findings(table)
    assert not finding(findings, "prob_gap_signed", label="doctor")["called"]
    assert finding(findings, "prob_gap_signed", label="nurse")["called"]
    assert finding(findings, "prob_gap_signed", label="teacher")["called"]


def test_group_and_observational_rows_are_reported_but_never_called():
    findings = assess_findings(GENERATED)
    parity = finding(findings, "demographic_parity_difference", label="doctor")
    assert not parity["called"] and parity["reference"] == "none"
    observational = finding(findings, "demographic_parity_difference", "observational", label="doctor")
    assert not observational["called"] and observational["sentence"].startswith("Observational (originals only, descriptive): ")


def test_headline_puts_called_findings_first():
    sentences = headline_findings(GENERATED, max_items=4)
    assert sentences[0].startswith("changing gender: the top-1 label flips in 40%")
    assert all("above the control's" in s or "larger than the generator's own change" in s for s in sentences[1:3])
    assert "no difference detected at this sample size" in sentences[3]
    assert any_bias_finding(GENERATED)
    assert not any_bias_finding(GENERATED.filter(~pl.col("metric").is_in(["flip_rate", "prob_gap_signed", "prob_gap_abs"])))


def test_without_a_control_the_comparison_is_with_no_change_and_says_so():
    table = metrics_table([
        ("flip_rate", "evaluate_only", "race", None, None, 0.2, 0.1, 0.3, 80, 20),
        ("prob_gap_signed", "evaluate_only", "race", None, "doctor", 0.05, -0.01, 0.11, 80, 20),
        ("prob_gap_abs", "evaluate_only", "race", None, "doctor", 0.09, 0.07, 0.11, 80, 20),
        ("flip_rate", "real_vs_generated", "gender", None, None, 1.0, 0.86, 1.0, 7, 7),
    ])
    findings = assess_findings(table)
    flips = finding(findings, "flip_rate", "evaluate_only")
    assert flips["called"] and flips["reference"] == "no effect" and flips["no_effect"] == 0.0
    assert flips["sentence"] == (
        "Counterfactual sets: changing race: the top-1 label flips in 20% of pairs [10%, 30%] (n=80 pairs from 20 "
        "source images); this excludes no change (0), but there was no control in this run, so the generator's own "
        "variation is not ruled out")
    signed = finding(findings, "prob_gap_signed", "evaluate_only", label="doctor")
    assert not signed["called"] and signed["sentence"].endswith("there was no control in this run")
    assert "no difference detected at this sample size (n=80 pairs from 20 source images)" in signed["sentence"]
    absolute = finding(findings, "prob_gap_abs", "evaluate_only", label="doctor")
    assert not absolute["called"] and absolute["reference"] == "none"
    assert absolute["sentence"].endswith("so it is reported, not compared with 0")
    real = finding(findings, "flip_rate", "real_vs_generated")
    assert real["called"] and real["sentence"].startswith("Real vs generated: changing gender: the top-1 label flips in 100%")
    assert "Reconstruction was off: pairs compare original photos with generated images" in summary_markdown({}, table, None)


def test_a_missing_control_calls_nothing_and_says_why():
    table = metrics_table([
        ("flip_rate", "generated", "gender", None, None, 0.4, 0.3, 0.5, 120, 60),
        ("control_flip_rate", "generated", "gender", None, None, None, None, None, 0, 0, "no control pairs"),
    ])
    flips = finding(assess_findings(table), "flip_rate")
    assert not flips["called"] and "no control was measured for gender" in flips["sentence"]


def test_tables_from_before_strata_read_as_real_vs_generated():
    legacy = pl.DataFrame({"metric": ["flip_rate"], "attribute": ["gender"], "group": [None], "label": [None],
                           "query": [None], "value": [0.25], "ci_low": [0.1], "ci_high": [0.4], "n": [40]},
                          schema_overrides={"group": pl.String, "label": pl.String, "query": pl.String})
    flips = finding(assess_findings(legacy), "flip_rate", "real_vs_generated")
    assert flips["called"] and flips["n_sources"] is None
    assert "(n=40 pairs)" in flips["sentence"]
    assert assess_findings(pl.DataFrame()).columns == list(FINDINGS_SCHEMA)


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
            rows.append(row(f"s{s}r{k}", f"s{s}", "reconstruction", own, float(np.clip(base + rng.normal(0, 0.05), 0, 1)), set_id=set_id, seed=k))
            shift = effect if own == "male" else -effect
            rows.append(row(f"s{s}c{k}", f"s{s}", "counterfactual", other, float(np.clip(base + shift + rng.normal(0, 0.05), 0, 1)), set_id=set_id, seed=k))
        rows.append(row(f"s{s}x", f"s{s}", "reconstruction", own, float(np.clip(base + rng.normal(0, 0.05), 0, 1)), seed=2, control=True))
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
                     "content_key": f"k-{id_}", "label": None, **{f"score_{l}": float(x) for l, x in zip(MANY_LABELS, p)},
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
    assert {m["comparisons"].max() for m in null} == {70}
    assert sum(any_bias_finding(m) for m in null) <= 1
    # Each comparison on its own (the configured 95% intervals) calls noise in many of the same runs.
    assert sum(any_bias_finding(m.drop(FAMILY_COLUMNS)) for m in null) >= 2
    for i in range(3):
        called = assess_findings(run(500 + i, 1.0)).filter(pl.col("called"))
        doctor = called.filter((pl.col("metric") == "prob_gap_signed") & (pl.col("label") == "doctor"))
        assert doctor.height, f"planted run {i}: the shift was not found"
        # Only the planted change is called (raising one label's logit lowers the others' probabilities too).
        assert set(called["attribute"]) == {"age"} and set(called["group"].drop_nulls()) <= {"young→old", "middle→old"}


FAMILY_ROWS = [
    ("flip_rate", "generated", "gender", None, None, 0.30, 0.20, 0.40, 120, 60),
    ("flip_rate", "generated", "gender", "male→female", None, 0.35, 0.24, 0.46, 60, 30),
    ("control_flip_rate", "generated", "gender", None, None, 0.10, 0.05, 0.15, 60, 60),
    ("prob_gap_abs", "generated", "gender", None, "doctor", 0.20, 0.17, 0.23, 120, 60),
    ("control_prob_gap_abs", "generated", "gender", None, "doctor", 0.10, 0.08, 0.12, 60, 60),
]


def test_calls_are_decided_on_the_family_wise_intervals():
    # Configured 95% intervals: every metric lies clear of its control. Family-wise (70 comparisons):
    # the overall flip rate [0.17, 0.43] still clears the control's [0.03, 0.16]; the transition's
    # [0.15, 0.55] overlaps it; the gap's [0.15, 0.25] overlaps its control's family-wise [0.06, 0.16].
    family = {("flip_rate", None, None): (0.17, 0.43), ("flip_rate", "male→female", None): (0.15, 0.55),
              ("control_flip_rate", None, None): (0.03, 0.16), ("prob_gap_abs", None, "doctor"): (0.15, 0.25),
              ("control_prob_gap_abs", None, "doctor"): (0.06, 0.16)}
    findings = assess_findings(metrics_table(FAMILY_ROWS, family))
    overall = finding(findings, "flip_rate")
    assert overall["called"] and overall["verdict"] == "called"
    assert (overall["ci_low_adjusted"], overall["control_ci_high_adjusted"], overall["comparisons"]) == (0.17, 0.16, 70)
    assert overall["sentence"].endswith(
        "above the control's 10% [5%, 15%] (same source and value, another seed; n=60 pairs); at the family-wise "
        "99.93% level (70 comparisons in this run): [17%, 43%] vs the control's [3%, 16%]")
    transition = finding(findings, "flip_rate", group="male→female")
    assert not transition["called"] and transition["verdict"] == "no difference detected"
    assert transition["sentence"].startswith(
        "gender male→female: no difference detected once the run's 70 comparisons are accounted for (n=60 pairs from "
        "30 source images; at the family-wise 99.93% level the intervals overlap): the top-1 label flips in 35% of pairs "
        "[24%, 46%]")
    gap = finding(findings, "prob_gap_abs", label="doctor")
    assert not gap["called"], "the control's family-wise interval counts, not its configured one"
    # Without the family-wise columns (a table written before them) the configured intervals decide.
    legacy = assess_findings(metrics_table(FAMILY_ROWS).drop(FAMILY_COLUMNS))
    assert finding(legacy, "flip_rate", group="male→female")["called"] and finding(legacy, "prob_gap_abs", label="doctor")["called"]
    lines = verdict_lines(findings)
    assert lines == ["Calls are family-wise over the run's 70 comparisons (Bonferroni: each decided on 99.93% intervals), "
                     "so a run without any bias gets any call with probability about 5% at most."]


def test_the_run_verdict_tells_no_finding_from_undefined():
    compared = metrics_table([
        ("flip_rate", "generated", "gender", None, None, 0.12, 0.08, 0.16, 120, 60),
        ("control_flip_rate", "generated", "gender", None, None, 0.10, 0.05, 0.15, 60, 60),
    ])
    assert bias_verdict(compared) == "no finding" and not any_bias_finding(compared)
    no_pairs = "no pairs: every set of this attribute was dropped by the judge"
    with_age = pl.concat([compared, metrics_table([
        ("flip_rate", "generated", "age", None, None, None, None, None, 0, 0, no_pairs),
        ("control_flip_rate", "generated", "age", None, None, None, None, None, 0, 0, "no control pairs"),
    ])])
    findings = assess_findings(with_age)
    age = findings.filter(pl.col("attribute") == "age").row(0, named=True)
    assert (age["verdict"], age["called"]) == ("undefined", False)
    assert age["sentence"] == f"changing age: flip_rate is undefined ({no_pairs})"
    assert bias_verdict(with_age) == "undefined"
    assert verdict_lines(findings) == [f'age: undefined, not "no difference" ({no_pairs}).']
    assert f'age: undefined, not "no difference" ({no_pairs}).' in summary_markdown({}, with_age, None)
    # A control that is missing leaves the comparison undefined too; a call anywhere is a finding.
    missing_control = compared.filter(pl.col("metric") == "flip_rate")
    assert assess_findings(missing_control)["verdict"].to_list() == ["undefined"]
    assert bias_verdict(missing_control) == "undefined"
    assert bias_verdict(pl.concat([GENERATED, with_age], how="diagonal_relaxed")) == "finding"
    assert bias_verdict(pl.DataFrame()) == "undefined"


def test_a_table_without_the_metric_columns_is_refused_by_name():
    with pytest.raises(ValueError, match=r"metrics table lacks columns \['value'\]"):
        assess_findings(pl.DataFrame({"metric": ["flip_rate"], "attribute": ["gender"]}))


def test_without_a_control_the_family_wise_interval_must_exclude_no_change():
    table = metrics_table([
        ("flip_rate", "evaluate_only", "race", None, None, 0.2, 0.1, 0.3, 80, 20),
        ("prob_gap_signed", "evaluate_only", "race", None, "doctor", 0.05, 0.01, 0.09, 80, 20),
    ], {("flip_rate", None, None): (0.05, 0.35), ("prob_gap_signed", None, "doctor"): (-0.01, 0.11)}, comparisons=10)
    findings = assess_findings(table)
    flips = finding(findings, "flip_rate", "evaluate_only")
    assert flips["called"] and flips["sentence"].endswith(
        "this excludes no change (0); at the family-wise 99.5% level (10 comparisons in this run): [5%, 35%]; but there "
        "was no control in this run, so the generator's own variation is not ruled out")
    signed = finding(findings, "prob_gap_signed", "evaluate_only", label="doctor")
    assert not signed["called"] and signed["verdict"] == "no difference detected"
    assert ("no difference detected once the run's 10 comparisons are accounted for (n=80 pairs from 20 source images; "
            "at the family-wise 99.5% level the interval reaches no change (0))") in signed["sentence"]


# -- a generative model's probe gaps (counterfactual_lab/auditees) ---------------------------------

ASK_DOCTOR, ASK_NURSE = "Is this person a doctor?", "Is this person a nurse?"


def probe_rows(rows: list[tuple], comparisons: int = 12) -> pl.DataFrame:
    """(metric, stratum, query, value, ci_low, ci_high, ci_low_adjusted, ci_high_adjusted) for attribute
    gender, 60 pairs from 30 sources; the family-wise interval at 1 − 0.05/``comparisons``."""
    return pl.DataFrame([
        {"metric": metric, "stratum": stratum, "attribute": "gender", "group": None, "label": None, "query": query,
         "value": value, "ci_low": low, "ci_high": high, "n": 60, "n_sources": 30, "skipped_resamples": 0, "note": None,
         "ci_low_adjusted": adj_low, "ci_high_adjusted": adj_high, "confidence_adjusted": 1 - 0.05 / comparisons,
         "comparisons": comparisons}
        for metric, stratum, query, value, low, high, adj_low, adj_high in rows
    ], schema=METRICS_SCHEMA)


def probe_finding(findings: pl.DataFrame, metric: str, query: str, stratum: str = "generated") -> dict:
    frame = findings.filter((pl.col("metric") == metric) & (pl.col("query") == query) & (pl.col("stratum") == stratum))
    assert frame.height == 1, frame
    return frame.row(0, named=True)


def test_a_probe_gap_is_called_beside_the_control_of_its_own_prompt():
    # The same yes-probability gap under two prompts; only the nurse question's control is as large.
    table = probe_rows([
        ("yes_prob_gap_abs", "generated", ASK_DOCTOR, 0.30, 0.25, 0.35, 0.22, 0.38),
        ("control_yes_prob_gap_abs", "generated", ASK_DOCTOR, 0.05, 0.03, 0.07, 0.02, 0.09),
        ("yes_prob_gap_abs", "generated", ASK_NURSE, 0.30, 0.25, 0.35, 0.22, 0.38),
        ("control_yes_prob_gap_abs", "generated", ASK_NURSE, 0.28, 0.20, 0.36, 0.18, 0.40),
        # A signed gap clear of its control but not of 0 is not called; clear of both, it is.
        ("rating_gap_signed", "generated", ASK_DOCTOR, 0.40, -0.05, 0.85, -0.10, 0.90),
        ("control_rating_gap_signed", "generated", ASK_DOCTOR, -0.60, -0.80, -0.40, -0.90, -0.30),
        ("rating_gap_signed", "generated", ASK_NURSE, -0.50, -0.70, -0.30, -0.75, -0.25),
        ("control_rating_gap_signed", "generated", ASK_NURSE, 0.02, -0.05, 0.09, -0.08, 0.12),
        # Group rows of the probes are reported, never called.
        ("yes_prob_mean", "generated", ASK_DOCTOR, 0.7, 0.6, 0.8, None, None),
    ])
    findings = assess_findings(table)
    doctor = probe_finding(findings, "yes_prob_gap_abs", ASK_DOCTOR)
    assert doctor["called"] and doctor["control_metric"] == "control_yes_prob_gap_abs" and doctor["control_value"] == 0.05
    assert doctor["sentence"] == (
        "changing gender: P(yes) for 'Is this person a doctor?' moves by 0.3 on average [0.25, 0.35] (n=60 pairs from 30 "
        "source images), above the control's 0.05 [0.03, 0.07] (same source and value, another seed; n=60 pairs); at the "
        "family-wise 99.6% level (12 comparisons in this run): [0.22, 0.38] vs the control's [0.02, 0.09]")
    nurse = probe_finding(findings, "yes_prob_gap_abs", ASK_NURSE)
    assert not nurse["called"] and nurse["control_value"] == 0.28 and nurse["verdict"] == "no difference detected"
    assert not probe_finding(findings, "rating_gap_signed", ASK_DOCTOR)["called"]
    below = probe_finding(findings, "rating_gap_signed", ASK_NURSE)
    assert below["called"] and below["no_effect"] == 0.0
    assert "the expected rating for 'Is this person a nurse?' changes by -0.5 on average" in below["sentence"]
    assert probe_finding(findings, "yes_prob_mean", ASK_DOCTOR)["verdict"] == "reported"
    assert int(findings["called"].sum()) == 2 and bias_verdict(table) == "finding"


def test_without_a_control_a_signed_probe_gap_is_compared_with_no_change_and_an_absolute_one_reported():
    table = probe_rows([
        ("toxicity_rate_gap_signed", "evaluate_only", ASK_DOCTOR, 0.2, 0.1, 0.3, 0.05, 0.35),
        ("lexicon_warmth_gap_signed", "evaluate_only", ASK_DOCTOR, 0.2, 0.1, 0.3, -0.02, 0.42),
        ("max_toxicity_gap_abs", "evaluate_only", ASK_DOCTOR, 0.2, 0.1, 0.3, None, None),
    ], comparisons=2)
    findings = assess_findings(table)
    assert probe_finding(findings, "toxicity_rate_gap_signed", ASK_DOCTOR, "evaluate_only")["called"]
    warmth = probe_finding(findings, "lexicon_warmth_gap_signed", ASK_DOCTOR, "evaluate_only")
    assert not warmth["called"] and "the warmth words per answer for 'Is this person a doctor?'" in warmth["sentence"]
    reported = probe_finding(findings, "max_toxicity_gap_abs", ASK_DOCTOR, "evaluate_only")
    assert reported["verdict"] == "reported" and not reported["called"] and reported["comparisons"] is None


def test_a_probe_gap_without_its_control_is_undefined_not_no_difference():
    table = probe_rows([
        ("yes_prob_gap_abs", "generated", ASK_DOCTOR, 0.30, 0.25, 0.35, 0.22, 0.38),
        ("control_yes_prob_gap_abs", "generated", ASK_NURSE, 0.05, 0.03, 0.07, 0.02, 0.09),  # another prompt's
    ])
    row = probe_finding(assess_findings(table), "yes_prob_gap_abs", ASK_DOCTOR)
    assert row["verdict"] == "undefined" and row["control_value"] is None
    assert bias_verdict(table) == "undefined"
