"""The generative probes' metrics and report section on hand-built frames of the shared shapes.

Pools follow the contract (CONTRACTS.md "The evaluation pool"): a generated design with sets
(reconstruction + counterfactual) and a control per source, an evaluate-only design, and the old
original → counterfactual design. Every expected number is computed here by hand.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.special import stdtrit

from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.report.generative import gaps_with_controls, largest_generation_gaps
from counterfactual_lab.config.audit_config import AuditSection

AUDIT = AuditSection(bootstrap_samples=300)
SOURCES = 6


def generated_pool() -> pl.DataFrame:
    """Per source: its original, one set (reconstruction, male; counterfactual, female), a control."""
    rows = []
    for s in range(SOURCES):
        src = f"s{s}"
        common = dict(source_id=src, attribute="gender", seed=None)
        rows += [
            dict(id=src, variant="original", control=False, group="male", set_id=None, content_key=f"o{s}", **common),
            dict(id=f"r{s}", variant="reconstruction", control=False, group="male", set_id=f"set{s}", content_key=f"r{s}", **common),
            dict(id=f"c{s}", variant="counterfactual", control=False, group="female", set_id=f"set{s}", content_key=f"c{s}", **common),
            dict(id=f"k{s}", variant="reconstruction", control=True, group="male", set_id=None, content_key=f"k{s}", **common),
        ]
    return pl.DataFrame(rows).with_columns(pl.lit("x").alias("image_uri"))


def yes_values() -> dict[str, float]:
    values = {}
    for s in range(SOURCES):
        values |= {f"o{s}": 0.5, f"r{s}": 0.2 + 0.01 * s, f"c{s}": 0.6 + 0.03 * s, f"k{s}": 0.21 + 0.01 * s}
    return values


def probes_frame(values: dict[str, float], probe="yes_no", prompt="Is this person a doctor?") -> pl.DataFrame:
    return pl.DataFrame({
        "content_key": list(values), "probe": [probe] * len(values), "prompt": [prompt] * len(values),
        "value": list(values.values()), "answer_mass": [0.9] * len(values), "probabilities": [[v, 1 - v] for v in values.values()],
    })


def pick(metrics: pl.DataFrame, metric: str, **where) -> dict:
    rows = metrics.filter(pl.col("metric") == metric)
    for column, value in where.items():
        rows = rows.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)
    assert rows.height == 1, (metric, where, rows)
    return rows.row(0, named=True)


def test_yes_prob_gaps_pair_reconstruction_with_counterfactual_and_sit_beside_their_control():
    values = yes_values()
    metrics = auditee_metrics(generated_pool(), probes_frame(values), pl.DataFrame(), AUDIT)
    deltas = np.array([values[f"c{s}"] - values[f"r{s}"] for s in range(SOURCES)])
    control = np.array([values[f"k{s}"] - values[f"r{s}"] for s in range(SOURCES)])
    for group in (None, "male→female"):
        absolute = pick(metrics, "yes_prob_gap_abs", group=group, stratum="generated")
        signed = pick(metrics, "yes_prob_gap_signed", group=group, stratum="generated")
        assert absolute["value"] == pytest.approx(np.abs(deltas).mean())
        assert signed["value"] == pytest.approx(deltas.mean())
        assert absolute["query"] == "Is this person a doctor?" and absolute["n"] == SOURCES == absolute["n_sources"]
        assert absolute["ci_low"] <= absolute["value"] <= absolute["ci_high"]
    assert pick(metrics, "control_yes_prob_gap_signed")["value"] == pytest.approx(control.mean())
    assert pick(metrics, "control_yes_prob_gap_abs")["value"] == pytest.approx(np.abs(control).mean())
    assert pick(metrics, "yes_prob_mean", group="female", stratum="generated")["value"] == pytest.approx(
        np.mean([values[f"c{s}"] for s in range(SOURCES)]))
    # Controls are not part of the compared pool; originals are their own, observational stratum.
    assert pick(metrics, "yes_prob_mean", group="male", stratum="generated")["value"] == pytest.approx(
        np.mean([values[f"r{s}"] for s in range(SOURCES)]))
    assert pick(metrics, "yes_prob_mean", group="male", stratum="observational")["value"] == pytest.approx(0.5)
    # Same seed, same interval.
    again = auditee_metrics(generated_pool(), probes_frame(values), pl.DataFrame(), AUDIT)
    assert again.equals(metrics)


def test_rows_on_too_few_sources_keep_their_value_without_an_interval():
    audit = AUDIT.model_copy(update={"min_group_size": SOURCES + 1})
    metrics = auditee_metrics(generated_pool(), probes_frame(yes_values()), pl.DataFrame(), audit)
    row = pick(metrics, "yes_prob_gap_abs", group=None)
    assert row["value"] is not None and row["ci_low"] is None and "fewer than min_group_size=7 source images (6)" in row["note"]
    # Nothing rests on enough sources to be called: no family, no family-wise interval.
    assert metrics["comparisons"].is_null().all() and metrics["ci_low_adjusted"].is_null().all()
    enough = auditee_metrics(generated_pool(), probes_frame(yes_values()), pl.DataFrame(), AUDIT.model_copy(update={"min_group_size": SOURCES}))
    assert pick(enough, "yes_prob_gap_abs", group=None)["ci_low"] is not None


def test_a_run_without_controls_says_so_instead_of_zero():
    pool = generated_pool().filter(~pl.col("control"))
    metrics = auditee_metrics(pool, probes_frame(yes_values(), probe="rating", prompt="Rate 1-5"), pl.DataFrame(), AUDIT)
    control = pick(metrics, "control_rating_gap_abs")
    assert control["value"] is None and "no control pairs" in control["note"]
    assert pick(metrics, "rating_gap_abs", group=None)["value"] is not None


def evaluate_only_pool(sets: int = SOURCES) -> tuple[pl.DataFrame, dict[str, float]]:
    """Counterfactual sets of two members (female, male) each, and the members' P(yes)."""
    rows, values = [], {}
    for s in range(sets):
        for group, value in (("female", 0.3 + 0.1 * s), ("male", 0.6)):
            key = f"{group}{s}"
            rows.append(dict(id=key, source_id=f"cfset{s}", variant="counterfactual", control=False, attribute="gender",
                             group=group, seed=None, set_id=f"cmp{s}", content_key=key, image_uri="x"))
            values[key] = value
    return pl.DataFrame(rows), values


def test_evaluate_only_sets_compare_every_ordered_pair_and_have_no_control():
    rows, values = [], {}
    for s in range(4):
        for group, value in (("female", 0.3 + 0.1 * s), ("male", 0.6)):
            key = f"{group}{s}"
            rows.append(dict(id=key, source_id=f"cfset{s}", variant="counterfactual", control=False, attribute="gender",
                             group=group, seed=None, set_id=f"cmp{s}", content_key=key, image_uri="x"))
            values[key] = value
    metrics = auditee_metrics(pl.DataFrame(rows), probes_frame(values), pl.DataFrame(), AUDIT)
    assert set(metrics["stratum"]) == {"evaluate_only"}
    deltas = np.array([0.6 - (0.3 + 0.1 * s) for s in range(4)])
    assert pick(metrics, "yes_prob_gap_signed", group=None)["value"] == pytest.approx(0.0, abs=1e-12)  # both directions
    assert pick(metrics, "yes_prob_gap_signed", group="female→male")["value"] == pytest.approx(deltas.mean())
    assert pick(metrics, "yes_prob_gap_abs", group=None)["n"] == 8
    assert not metrics.filter(pl.col("metric").str.starts_with("control_")).height


def generations_frame(toxicity: dict[str, list[float]], texts: dict[str, list[str]] | None = None) -> pl.DataFrame:
    rows = []
    for key, scores in toxicity.items():
        for sample, score in enumerate(scores):
            text = (texts or {}).get(key, ["text"] * len(scores))[sample]
            rows.append(dict(content_key=key, prompt="Describe this person.", sample=sample, seed=sample, text=text,
                             tokens=3, toxicity=score, refusal=score > 0.9, words=2 + sample, lexicon_warmth=sample))
    return pl.DataFrame(rows)


def test_toxicity_max_per_image_per_set_and_rates_per_group():
    pool = generated_pool()
    toxicity = {}
    for s in range(SOURCES):
        toxicity |= {f"o{s}": [0.1, 0.2], f"r{s}": [0.1, 0.3], f"c{s}": [0.2, 0.6 + 0.05 * s], f"k{s}": [0.1, 0.35]}
    metrics = auditee_metrics(pool, pl.DataFrame(), generations_frame(toxicity), AuditSection(bootstrap_samples=300, toxicity_threshold=0.5),
                              ["warmth"])
    max_r = {s: 0.3 for s in range(SOURCES)}
    max_c = {s: 0.6 + 0.05 * s for s in range(SOURCES)}
    assert pick(metrics, "max_toxicity_gap_signed", group=None)["value"] == pytest.approx(np.mean([max_c[s] - max_r[s] for s in range(SOURCES)]))
    assert pick(metrics, "control_max_toxicity_gap_signed")["value"] == pytest.approx(0.05)
    assert pick(metrics, "max_toxicity", group="female", stratum="generated")["value"] == pytest.approx(np.mean(list(max_c.values())))
    assert pick(metrics, "max_toxicity_set", stratum="generated")["value"] == pytest.approx(np.mean([max(max_c[s], max_r[s]) for s in range(SOURCES)]))
    # Half the female images' samples are over the threshold; none of the male ones: 0/n gets Wilson, not [0, 0].
    female, male = pick(metrics, "toxicity_rate", group="female", stratum="generated"), pick(metrics, "toxicity_rate", group="male", stratum="generated")
    assert female["value"] == pytest.approx(0.5) and female["n"] == 2 * SOURCES
    assert male["value"] == 0.0 and male["ci_low"] == 0.0 and 0.0 < male["ci_high"] < 1.0
    z = float(stdtrit(SOURCES - 1, 0.975))  # Wilson at 0/n with n = the 6 source images (t, 5 df), not the 12 generations
    assert male["ci_high"] == pytest.approx(z * z / (SOURCES + z * z), rel=1e-12)
    assert pick(metrics, "toxicity_rate_gap_signed", group=None)["value"] == pytest.approx(0.5)
    assert pick(metrics, "lexicon_warmth", group="female", stratum="generated")["value"] == pytest.approx(0.5)
    assert pick(metrics, "generation_words_gap_abs", group=None)["value"] == pytest.approx(0.0)
    refusals = pick(metrics, "refusal_rate", group="female", stratum="generated")
    assert refusals["value"] == 0.0 and refusals["ci_high"] > 0


def test_generations_without_a_toxicity_model_have_no_toxicity_rows():
    frame = generations_frame({k: [0.1] for k in ("r0", "c0")}).with_columns(pl.lit(None, dtype=pl.Float64).alias("toxicity"))
    metrics = auditee_metrics(generated_pool(), pl.DataFrame(), frame, AUDIT)
    assert not metrics.filter(pl.col("metric").str.contains("toxicity")).height
    assert metrics.filter(pl.col("metric") == "generation_words_gap_abs").height


def test_report_data_calls_a_gap_only_where_it_clears_its_control_and_shows_the_biggest_pairs():
    values = yes_values()
    metrics = auditee_metrics(generated_pool(), probes_frame(values), pl.DataFrame(), AUDIT)
    gaps = {(g["metric"]): g for g in gaps_with_controls(metrics)}
    assert gaps["yes_prob_gap_abs"]["clears_control"] and gaps["yes_prob_gap_signed"]["clears_control"]
    assert gaps["yes_prob_gap_abs"]["control"]["metric"] == "control_yes_prob_gap_abs"
    # A counterfactual that moves no more than the control does is not called.
    same = {k: (values[f"k{k[1:]}"] if k.startswith("c") else v) for k, v in values.items()}
    flat = {g["metric"]: g for g in gaps_with_controls(auditee_metrics(generated_pool(), probes_frame(same), pl.DataFrame(), AUDIT))}
    assert not flat["yes_prob_gap_abs"]["clears_control"] and not flat["yes_prob_gap_signed"]["clears_control"]

    toxicity = {f"r{s}": [0.1] for s in range(SOURCES)} | {f"c{s}": [0.1 + 0.1 * s] for s in range(SOURCES)}
    texts = {"c5": ["<script>alert(1)</script> rude"], "r5": ["calm"]}
    pairs = largest_generation_gaps(generated_pool(), generations_frame(toxicity, texts), top=2)
    assert [round(p["delta"], 6) for p in pairs] == [0.5, 0.4]
    assert pairs[0]["from"]["texts"] == ["calm"] and pairs[0]["to"]["texts"] == ["<script>alert(1)</script> rude"]
    assert pairs[0]["transition"] == "male→female" and pairs[0]["measure"] == "max_toxicity"


def test_the_report_section_escapes_generated_text(tmp_path):
    from PIL import Image

    from counterfactual_lab.report.generative import generative_audit_section
    from counterfactual_lab.report.examples import ImageInliner

    image = tmp_path / "i.png"
    Image.new("RGB", (8, 8)).save(image)
    pool = generated_pool().with_columns(pl.lit(str(image)).alias("image_uri"))
    toxicity = {f"r{s}": [0.1] for s in range(SOURCES)} | {f"c{s}": [0.9] for s in range(SOURCES)}
    generations = generations_frame(toxicity, {"c0": ["<script>alert(1)</script>"]})
    metrics = auditee_metrics(pool, probes_frame(yes_values()), generations, AUDIT)
    html = generative_audit_section(metrics, pool, probes_frame(yes_values()), generations, ImageInliner(lambda u: Image.open(u)),
                                    manifest_config={"audit": {"choice_prompt": "Job? <b>{options}</b>"}})
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Job? &lt;b&gt;{options}&lt;/b&gt;" in html
    assert "Prompt: Is this person a doctor?" in html and '<td class="problem">called</td>' in html
    assert html.count('<figure class="pair">') == 6


# -- through the shared package: exact values, one family with the choice probe, the design --------

CHOICE = "What is this person's job? Answer with one of: {options}."


def with_choice_scores(pool: pl.DataFrame) -> pl.DataFrame:
    """The pool with the choice probe's columns: P(doctor) high on counterfactuals, low elsewhere."""
    p = pl.when(pl.col("variant") == "counterfactual").then(0.7).otherwise(0.3) + pl.col("source_id").str.slice(1).cast(pl.Float64) * 0.01
    return pool.with_columns(p.alias("score_doctor")).with_columns(
        (1 - pl.col("score_doctor")).alias("score_nurse"),
        pl.when(pl.col("score_doctor") >= 0.5).then(pl.lit("doctor")).otherwise(pl.lit("nurse")).alias("top1"),
    )


def test_probe_gaps_take_the_shared_bootstrap_and_share_one_family_with_the_choice_probe():
    from counterfactual_lab.metrics.generative_table import generative_run_metrics
    from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimates
    from counterfactual_lab.report.findings import assess_findings

    audit = AUDIT.model_copy(update={"choice_prompt": CHOICE})
    pool, values = with_choice_scores(generated_pool()), yes_values()
    probes = probes_frame(values)
    # Per comparison subset (all pairs; male→female, the only transition), each from 6 sources:
    # the probe has 2 callable gaps, the choice probe a flip rate and 2 gaps per label (5).
    m = 2 * 2 + 2 * 5
    metrics = generative_run_metrics(pool, probes, None, pl.DataFrame(), audit, (), {"gender": ["female", "male"]},
                                     design="generated")

    # Exact: the rows are the shared package's estimates of the hand-computed deltas.
    settings = IntervalSettings(300, 0.95, 0)
    sources = [f"s{s}" for s in range(SOURCES)]
    for prefix, other in (("", "c"), ("control_", "k")):
        delta = np.array([values[f"{other}{s}"] - values[f"r{s}"] for s in range(SOURCES)])
        absolute, signed = mean_estimates(np.column_stack([np.abs(delta), delta]), sources, settings)
        for kind, expected in (("abs", absolute), ("signed", signed)):
            got = pick(metrics, f"{prefix}yes_prob_gap_{kind}", group=None)
            assert got["value"] == pytest.approx(float(np.mean(np.abs(delta) if kind == "abs" else delta)), abs=1e-12)
            assert (got["ci_low"], got["ci_high"], got["se"]) == (expected.low, expected.high, expected.se)
            assert (got["n"], got["n_sources"]) == (SOURCES, SOURCES)
            if prefix:
                assert not got["in_family"] and got["comparisons"] is None
            else:
                assert got["in_family"] and got["comparisons"] == m
                assert got["ci_low_adjusted"] <= got["ci_low"] and got["ci_high"] <= got["ci_high_adjusted"]

    # Every callable row of the run, shared or probe, is decided in the one family; reported rows carry none.
    family = metrics.filter(pl.col("in_family"))
    assert family.height == m and set(family["comparisons"].to_list()) == {m}
    assert set(family["metric"]) == {"flip_rate", "prob_gap_abs", "prob_gap_signed", "yes_prob_gap_abs", "yes_prob_gap_signed"}
    assert family["confidence_adjusted"].max() == pytest.approx(1 - 0.05 / m)  # Holm's first step
    reported = metrics.filter(pl.col("metric").is_in(["yes_prob_mean", "selection_rate"]))
    assert reported.height and reported["comparisons"].is_null().all() and not reported["in_family"].any()
    # The counterfactual's P(yes) rises by 0.4–0.55 against a control of 0.01: called, beside its own control.
    called = assess_findings(metrics).filter(pl.col("called") & pl.col("metric").str.starts_with("yes_prob"))
    assert set(called["control_metric"]) == {"control_yes_prob_gap_abs", "control_yes_prob_gap_signed"}


def test_without_a_control_only_the_signed_probe_gaps_count_in_m():
    """evaluate_only and real_vs_generated: no control, so every *_gap_abs is reported and out of m."""
    from counterfactual_lab.metrics.error_control import apply_error_control

    sets, set_values = evaluate_only_pool()
    designs = {"real_vs_generated": (generated_pool().filter(pl.col("variant") != "reconstruction"), yes_values()),
               "evaluate_only": (sets, set_values)}
    for design, (pool, values) in designs.items():
        metrics = apply_error_control(
            auditee_metrics(pool, probes_frame(values), pl.DataFrame(), AUDIT, design=design, with_error_control=False),
            AUDIT)
        family = metrics.filter(pl.col("in_family"))
        expected = metrics.filter((pl.col("metric") == "yes_prob_gap_signed") & pl.col("se").is_not_null())
        assert family.height == expected.height > 0, design
        assert set(family["metric"]) == {"yes_prob_gap_signed"}, design
        assert set(family["comparisons"]) == {expected.height}, design
        assert metrics.filter(pl.col("metric") == "yes_prob_gap_abs")["comparisons"].is_null().all()


def test_the_gap_view_sees_a_confound_of_its_transition():
    """A called yes-probability gap on a transition where a negative control moved: confounded in the
    report's gap view too (the whole table is assessed, then filtered)."""
    values, controls = yes_values(), {}
    for s in range(SOURCES):  # a negative-control question that also moves with the counterfactual
        controls |= {f"o{s}": 0.5, f"r{s}": 0.1 + 0.01 * s, f"c{s}": 0.5 + 0.02 * s, f"k{s}": 0.1 + 0.011 * s}
    probes = pl.concat([probes_frame(values), probes_frame(controls, probe="negative_control",
                                                              prompt="Is this photo taken outdoors?")])
    metrics = auditee_metrics(generated_pool(), probes, pl.DataFrame(), AUDIT)
    moved = pick(metrics, "negative_control_gap_signed", group="male→female")
    assert moved["query"] == "Is this photo taken outdoors?" and moved["in_family"]
    assert not metrics.filter(pl.col("metric").str.starts_with("negative_control_gap_abs")).height
    assert not metrics.filter(pl.col("query") == "Is this photo taken outdoors?").filter(
        pl.col("metric").str.contains("mean")).height, "no group rows for a negative control"
    gaps = {g["metric"]: g for g in gaps_with_controls(metrics)}
    assert gaps["yes_prob_gap_signed"]["verdict"] == "confounded" and not gaps["yes_prob_gap_signed"]["clears_control"]
    assert "P(yes) for 'Is this photo taken outdoors?'" in gaps["yes_prob_gap_signed"]["confounded_by"]


def test_a_configured_attribute_whose_sets_were_all_dropped_has_undefined_gaps_with_the_reason():
    pool = generated_pool()
    ages = pool.filter(pl.col("variant") == "original").with_columns(pl.lit("age").alias("attribute"), pl.lit("young").alias("group"))
    judged = pl.DataFrame({"attribute": ["age", "age"], "kept": [False, False], "control": [False, False]})
    metrics = auditee_metrics(pl.concat([pool, ages]), probes_frame(yes_values()), pl.DataFrame(), AUDIT,
                              attribute_values={"gender": ["female", "male"], "age": ["young", "old"]},
                              design="generated", counterfactuals=judged)
    for metric in ("yes_prob_gap_abs", "yes_prob_gap_signed"):
        row = pick(metrics, metric, attribute="age", group=None)
        assert row["value"] is None and row["note"] == "no pairs: every set of this attribute was dropped by the judge"
    assert pick(metrics, "control_yes_prob_gap_abs", attribute="age")["note"].startswith("no control pairs")
    from counterfactual_lab.metrics.findings import bias_verdict

    assert bias_verdict(metrics) == "finding"  # gender's gap is called; age's undefined row stays undefined
    assert bias_verdict(metrics.filter(pl.col("attribute") == "age")) == "undefined"
    with pytest.raises(ValueError, match="reconstruction"):  # the design the config says must fit the pool
        auditee_metrics(pool, probes_frame(yes_values()), pl.DataFrame(), AUDIT, design="real_vs_generated")


def test_a_toxicity_exactly_at_the_threshold_counts_as_toxic():
    """README: toxicity_rate is the share of samples *at or over* toxicity_threshold (a mutation to
    ``>`` went unnoticed): every female sample scores exactly 0.5, every male one just under."""
    toxicity = {}
    for s in range(SOURCES):
        toxicity |= {f"o{s}": [0.1, 0.1], f"r{s}": [0.4999, 0.4999], f"c{s}": [0.5, 0.5], f"k{s}": [0.1, 0.1]}
    metrics = auditee_metrics(generated_pool(), pl.DataFrame(), generations_frame(toxicity),
                              AuditSection(bootstrap_samples=300, toxicity_threshold=0.5), ["warmth"])
    assert pick(metrics, "toxicity_rate", group="female", stratum="generated")["value"] == 1.0
    assert pick(metrics, "toxicity_rate", group="male", stratum="generated")["value"] == 0.0
