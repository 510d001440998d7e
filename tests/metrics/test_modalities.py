"""Which modality carries the gap, on a hand-worked pool of person-word readings.

Four sources, one set each (reconstruction + counterfactual) and a control; every image asked with
the words its pairs need (evaluate/readings.py). p = P(doctor) of (image, word), s the source's
value, t the target's:

  source  s→t            rec,s  rec,t  cf,s  cf,t  control,s
  s1      male→female    0.60   0.40   0.62  0.30  0.61
  s2      male→female    0.50   0.35   0.46  0.33  0.52
  s3      female→male    0.30   0.55   0.33  0.60  0.28
  s4      female→male    0.40   0.54   0.37  0.52  0.41

image Δ = (cf,s) − (rec,s): +0.02 −0.04 | +0.03 −0.03 → male→female −0.01, female→male 0.00
text  Δ = (rec,t) − (rec,s): −0.20 −0.15 | +0.25 +0.14 → male→female −0.175, female→male +0.195
both  Δ = (cf,t) − (rec,s):  −0.30 −0.17 | +0.30 +0.12 → male→female −0.235, female→male +0.21
flips (doctor when p ≥ 0.5): image 1 of 4 (s2), text 4 of 4, both 4 of 4
controls: image and both (control,s) − (rec,s) = +0.01 +0.02 −0.02 +0.01 → mean +0.005; text 0 exactly
"""

from __future__ import annotations

import polars as pl
import pytest
from metric_frames import one, row

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.evaluate.readings import base_readings, with_readings
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.findings import decide_findings
from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.plan.person_words import PersonWords
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.forests import family_title, report_forests
from counterfactual_lab.report.html import render_report
from counterfactual_lab.report.templating import render_fragment
from counterfactual_lab.report.modalities import (
    carrier_sentence,
    modalities_view,
    modality_comparisons,
)

AUDIT = AuditSection(labels=["doctor", "nurse"], prompt="a photo of a {person} who is a {label}", queries=[],
                     modalities=["image", "text", "both"], bootstrap_samples=200, min_group_size=1)
WORDS = {"female": "woman", "male": "man"}
SOURCES = [  # source, s, t, rec s, rec t, cf s, cf t, control s
    ("s1", "male", "female", 0.60, 0.40, 0.62, 0.30, 0.61),
    ("s2", "male", "female", 0.50, 0.35, 0.46, 0.33, 0.52),
    ("s3", "female", "male", 0.30, 0.55, 0.33, 0.60, 0.28),
    ("s4", "female", "male", 0.40, 0.54, 0.37, 0.52, 0.41),
]


def reading(base: dict, value: str, p: float) -> dict:
    """``base`` (a pool row) asked with the word of ``value``."""
    out = row(base["id"], base["source_id"], base["variant"], base["group"], p, set_id=base["set_id"], seed=base["seed"],
              control=base["control"])
    return {**out, "person": WORDS[value], "person_value": value}


def predictions(copies: int = 1) -> pl.DataFrame:
    """The table above; ``copies`` > 1 repeats each source (the same numbers) under new ids."""
    rows = []
    for copy, (source, s, t, rec_s, rec_t, cf_s, cf_t, ctl) in ((c, x) for c in range(copies) for x in SOURCES):
        source = f"{source}-{copy}" if copy else source
        set_id = f"{source}-gender-0"
        original = row(f"{source}-o", source, "original", s, rec_s)
        rec = row(f"{source}-r", source, "reconstruction", s, rec_s, set_id=set_id, seed=0)
        cf = row(f"{source}-c", source, "counterfactual", t, cf_s, set_id=set_id, seed=0)
        control = row(f"{source}-x", source, "reconstruction", s, ctl, seed=1, control=True)
        rows += [reading(original, s, rec_s), reading(rec, s, rec_s), reading(rec, t, rec_t), reading(cf, s, cf_s),
                 reading(cf, t, cf_t), reading(control, s, ctl)]
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def metrics() -> pl.DataFrame:
    return compute_metrics(predictions(), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})


@pytest.mark.parametrize("modality,male_to_female,female_to_male", [
    ("image", -0.01, 0.0), ("text", -0.175, 0.195), ("both", -0.235, 0.21)])
def test_each_modality_reads_its_own_pairs(metrics, modality, male_to_female, female_to_male):
    gap = lambda group: one(metrics, "prob_gap_signed", label="doctor", group=group, modality=modality)["value"]  # noqa: E731
    assert gap("male→female") == pytest.approx(male_to_female, abs=1e-12)
    assert gap("female→male") == pytest.approx(female_to_male, abs=1e-12)


def test_flip_rates_and_controls_per_modality(metrics):
    flips = {m: one(metrics, "flip_rate", group=None, modality=m)["value"] for m in ("image", "text", "both")}
    assert flips == pytest.approx({"image": 0.25, "text": 1.0, "both": 1.0})
    controls = {m: one(metrics, "control_prob_gap_signed", label="doctor", modality=m) for m in ("image", "text", "both")}
    assert controls["image"]["value"] == pytest.approx(0.005) and controls["both"]["value"] == pytest.approx(0.005)
    # The text modality's control reads one image with one word: exactly no change, with a zero-width interval.
    assert controls["text"]["value"] == 0 and controls["text"]["ci_low"] == 0 == controls["text"]["ci_high"]


def test_rows_other_than_pairs_read_each_image_with_its_sources_word(metrics):
    assert set(metrics.filter(pl.col("metric") == "selection_rate")["modality"]) == {"image"}
    # The generated pool's selection rate of 'doctor' among female images: rec s3 0.30, rec s4 0.40 (nurse), the
    # counterfactuals of s1 and s2 read with "man": 0.62 (doctor), 0.46 (nurse) → 1 of 4.
    rate = one(metrics, "selection_rate", stratum="generated", group="female", label="doctor")
    assert rate["value"] == pytest.approx(0.25) and rate["n"] == 4


def test_a_swapped_modality_is_told_apart_and_each_row_sits_beside_its_own_control(metrics):
    findings = decide_findings(metrics)
    text = findings.filter((pl.col("metric") == "prob_gap_signed") & (pl.col("modality") == "text")
                           & (pl.col("group") == "female→male") & (pl.col("label") == "doctor")).row(0, named=True)
    assert text["control_value"] == 0
    image = findings.filter((pl.col("metric") == "prob_gap_signed") & (pl.col("modality") == "image")
                            & (pl.col("group") == "female→male") & (pl.col("label") == "doctor")).row(0, named=True)
    assert image["control_value"] == pytest.approx(0.005)


def test_the_report_names_the_modality_that_carries_the_gap():
    # Eight copies of each source: 16 per transition, so the text's gap is called and the image's is not.
    metrics = compute_metrics(predictions(8), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})
    entries = {(e["group"], e["label"]): e for e in modality_comparisons(assess_findings(metrics))}
    entry = entries[("female→male", "doctor")]
    assert set(entry["cells"]) == {"image", "text", "both"}
    called = {m: bool(r["called"]) for m, r in entry["cells"].items()}
    assert called["text"] and not called["image"]
    assert entry["sentence"].startswith("The text carries the gap")
    # The HTML section's data: one text per modality, in the order image, text, both.
    view = modalities_view(assess_findings(metrics))
    assert view["columns"] == ["image", "text", "both"]
    shown = next(r for r in view["rows"] if r["transition"] == "gender female→male" and "doctor" in r["gap"])
    assert shown["cells"][1].startswith("0.195") and shown["cells"][1].endswith("called")
    assert shown["cells"][0].startswith("0 [") and shown["cells"][0].endswith("no difference detected")
    # The template renders that data, escaped: a gap's words cannot become markup.
    html = render_fragment("_modalities.html.j2", modalities={**view, "rows": [{**view["rows"][0], "gap": "<b>x</b>"}]})
    assert "<th>text</th>" in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert modalities_view(assess_findings(metrics.filter(pl.col("modality") == "image"))) is None


@pytest.mark.parametrize("called,start", [
    ({"image"}, "The image carries the gap"), ({"text", "both"}, "The text carries the gap"),
    ({"image", "text"}, "The image and the text each carry"), ({"both"}, "Only the image and the text changed together"),
    (set(), "No modality carries")])
def test_which_modality_carries_the_gap_in_words(called, start):
    cells = {m: {"called": m in called, "value": 0.1, "verdict": "called" if m in called else "no difference detected"}
             for m in ("image", "text", "both")}
    assert carrier_sentence(cells).startswith(start)


def test_the_pool_is_asked_once_per_word_its_pairs_need():
    pool = base_readings(predictions()).drop("person", "person_value")
    words = PersonWords({"gender": ["female", "male"]})
    expanded = with_readings(pool, words, ["image", "text", "both"])
    asked = {(r["id"], r["person"]) for r in expanded.iter_rows(named=True)}
    expected = {(r["id"], r["person"]) for r in predictions().iter_rows(named=True)}
    assert asked == expected
    # image alone: a counterfactual only with its source's word, a reconstruction only with its own.
    image_only = with_readings(pool, words, ["image"])
    assert image_only.height == pool.height
    assert set(image_only.filter(pl.col("id") == "s1-c")["person"]) == {"man"}
    assert with_readings(pool, None) is pool  # no {person} template: nothing added
    assert base_readings(expanded).sort("id")["id"].to_list() == pool.sort("id")["id"].to_list()


def test_evaluate_only_sets_read_each_ordered_pair_in_each_modality():
    """One set of two members, a (female) and b (male), each asked with both words:
    (a,woman) 0.30 (a,man) 0.50 (b,woman) 0.40 (b,man) 0.70.
    a→b: image (b,woman) − (a,woman) = +0.10; text (a,man) − (a,woman) = +0.20; both (b,man) − (a,woman) = +0.40
    b→a: image (a,man) − (b,man) = −0.20; text (b,woman) − (b,man) = −0.30; both (a,woman) − (b,man) = −0.40"""
    p = {("a", "female"): 0.30, ("a", "male"): 0.50, ("b", "female"): 0.40, ("b", "male"): 0.70}
    group = {"a": "female", "b": "male"}
    rows = []
    for (member, value), prob in p.items():
        base = row(member, "set1", "counterfactual", group[member], prob, set_id="set1-gender")
        rows.append({**base, "person": WORDS[value], "person_value": value})
    metrics = compute_metrics(pl.DataFrame(rows), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]},
                              design="evaluate_only")
    expected = {("female→male", "image"): 0.10, ("female→male", "text"): 0.20, ("female→male", "both"): 0.40,
                ("male→female", "image"): -0.20, ("male→female", "text"): -0.30, ("male→female", "both"): -0.40}
    for (group_, modality), value in expected.items():
        got = one(metrics, "prob_gap_signed", label="doctor", group=group_, modality=modality)["value"]
        assert got == pytest.approx(value, abs=1e-12), (group_, modality)


def test_a_generative_probes_gaps_come_in_each_modality_too():
    """The table above as P(yes) of a yes/no question with {person}, answered per (image, word)."""
    frame = predictions()
    probes = frame.select("content_key", pl.lit("yes_no").alias("probe"), pl.lit("Is the {person} a doctor?").alias("prompt"),
                          pl.col("score_doctor").alias("value"), pl.lit(1.0).alias("answer_mass"), "person")
    audit = AuditSection(kind="vlm", yes_no=["Is the {person} a doctor?"], modalities=["image", "text", "both"],
                         bootstrap_samples=200, min_group_size=1)
    metrics = auditee_metrics(frame.drop("score_doctor", "score_nurse", "top1"), probes, pl.DataFrame(), audit,
                              attribute_values={"gender": ["female", "male"]})
    expected = {"image": (-0.01, 0.0), "text": (-0.175, 0.195), "both": (-0.235, 0.21)}
    for modality, (male_to_female, female_to_male) in expected.items():
        gap = lambda group: one(metrics, "yes_prob_gap_signed", group=group, modality=modality)["value"]  # noqa: E731
        assert gap("male→female") == pytest.approx(male_to_female, abs=1e-12), modality
        assert gap("female→male") == pytest.approx(female_to_male, abs=1e-12), modality
    assert one(metrics, "control_yes_prob_gap_abs", modality="text")["value"] == 0
    # The group rows read each image with its source's word, once (not once per word it was asked with).
    assert one(metrics, "yes_prob_mean", stratum="generated", group="female")["n"] == 4


def test_the_html_report_shows_the_modalities_and_plots_each_apart():
    """The template report has the side-by-side section, and the text and both rows are forest
    families of their own, titled with what changed, never points in the image's plot."""
    metrics = compute_metrics(predictions(8), pl.DataFrame(), pl.DataFrame(), AUDIT, {"gender": ["female", "male"]})
    html = render_report(manifest={"run_id": "r1", "metrics": {"confidence": 0.95}}, metrics=metrics,
                         counterfactuals=pl.DataFrame(), predictions=pl.DataFrame(), load_image=lambda uri: None)
    section = html.split('<details id="modalities"')[1].split("</details>")[0]
    assert "The text carries the gap" in section and "<th>both</th>" in section
    assert "<style" not in section and "style=" not in section and "<script" not in section, "the CSP: no inline style"
    findings = assess_findings(metrics)
    families = {(f.family, f.modality): f for f in report_forests(findings, {}).first + report_forests(findings, {}).more}
    image, text = families[("prob_gap_signed", "image")], families[("prob_gap_signed", "text")]
    signed = findings.filter(pl.col("metric") == "prob_gap_signed")
    assert image.rows == signed.filter(pl.col("modality") == "image").height, "the image's plot holds its rows alone"
    assert text.rows == signed.filter(pl.col("modality") == "text").height
    assert text.title.endswith("[text: the same image, the {person} word changed]") and "[" not in image.title
    assert family_title("flip_rate", None, "both").startswith("Flip rate")
