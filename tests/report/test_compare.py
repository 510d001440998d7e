"""``cflab compare`` and ``compare_runs``: two runs side by side, and the runs of a folder over time, on
runs published by hand from a pool of predictions whose truth is known (the metrics are the real
metrics code's)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import counterfactual_lab as cfl
from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.errors import UserError
from counterfactual_lab.flows.cli import EXIT_OK, EXIT_USAGE, main
from counterfactual_lab.metrics.table import compute_metrics
from counterfactual_lab.report.compare import APPEARED, CHANGED, ONLY_A, ONLY_B, comparability, compare_runs
from counterfactual_lab.report.differences import PairedDifferences, seed_allowance, shift_allowance
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.history import run_history
from counterfactual_lab.runs.publisher import RunPublisher
from counterfactual_lab.runs.reader import read_run
from counterfactual_lab.storage.files import exists

SOURCES = 30
AUDIT = AuditSection(labels=["doctor", "nurse"], bootstrap_samples=200)
VALUES = {"gender": ["female", "male"]}


def pool(seed: int, shift: float = 0.0, seed_shift: float = 0.0, control_sd: float = 0.05) -> pl.DataFrame:
    """A generated-vs-generated pool of SOURCES sources, one set each and a control each.

    Per source the reconstruction's P(doctor) is drawn from the source (the same in every run);
    the counterfactual's is it plus noise of this run's ``seed``, minus ``shift`` for male→female (a
    planted bias), plus ``seed_shift`` for every counterfactual (what another generator seed can do to
    every image at once); the control's is it plus noise of sd ``control_sd`` (another seed alone)."""
    sources = np.random.default_rng(99)
    noise = np.random.default_rng(seed)
    rows = []
    for s in range(SOURCES):
        own, other = ("male", "female") if s % 2 == 0 else ("female", "male")
        base = float(sources.uniform(0.2, 0.8))
        cf = base + float(noise.normal(0, 0.02)) + seed_shift - (shift if own == "male" else 0.0)
        control = base + float(noise.normal(0, control_sd))
        set_id = f"s{s}-gender-0"
        for suffix, variant, group, p, extra in (("o", "original", own, base, {}),
                                                 ("r", "reconstruction", own, base, {"set_id": set_id, "seed": 0}),
                                                 ("c", "counterfactual", other, cf, {"set_id": set_id, "seed": 0}),
                                                 ("x", "reconstruction", own, control, {"seed": 1, "control": True})):
            p = min(max(p, 0.0), 1.0)
            rows.append({"id": f"s{s}-{suffix}", "source_id": f"s{s}", "variant": variant, "control": extra.get("control", False),
                         "attribute": "gender", "group": group, "seed": extra.get("seed"), "set_id": extra.get("set_id"),
                         "caption": "c", "image_uri": f"mem://s{s}-{suffix}", "content_key": f"k-s{s}-{suffix}",
                         "label": None, "score_doctor": p, "score_nurse": 1 - p,
                         "top1": "doctor" if p >= 0.5 else "nurse", "caption_similarity": 0.3})
    return pl.DataFrame(rows)


def manifest(run_id: str, model: str = "sha256:fair", fingerprint: str = "f00d", generation_seed: int = 0,
             confidence: float = 0.95, day: int = 1) -> dict:
    return {
        "run_id": run_id, "tiny_models": False, "finished_at": f"2025-01-0{day}T08:00:00+00:00",
        "dataset": {"name": "sample", "uri": "/data", "fingerprint": fingerprint},
        "models": {"audit": {"model": f"clip-{model[-4:]}", "revision": None}, "generator": {"model": "img2img", "revision": None},
                   "judge": {"model": "clip", "revision": None}},
        "run_identity": {"models": {"audit": model, "generator": "sha256:gen", "judge": "sha256:judge"},
                         "stages": {"generation": {"seed": generation_seed, "method": "img2img"}}},
        "metrics": {"confidence": confidence, "labels": ["doctor", "nurse"], "bootstrap_seed": 0},
        "row_accounting": {"planned": 90, "kept": 90 - generation_seed, "dropped": generation_seed, "failed": 0},
    }


def publish(out: Path | str, run_id: str, predictions: pl.DataFrame, edit_metrics=None, **manifest_fields) -> str:
    publisher = RunPublisher(str(out), run_id, "sample")
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), AUDIT, VALUES, design="generated")
    metrics = edit_metrics(metrics) if edit_metrics is not None else metrics
    tables = {"predictions": publisher.write_table("predictions", predictions), "metrics": publisher.write_table("metrics", metrics)}
    publisher.write_manifest({**manifest(run_id, **manifest_fields), "tables": tables})
    return publisher.run_uri


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("compare-out")
    return {
        "fair": publish(out, "fair-0", pool(seed=0)),
        "fair seed 1": publish(out, "fair-1", pool(seed=1), generation_seed=1, day=3),
        "biased": publish(out, "biased-0", pool(seed=0, shift=0.3), model="sha256:biased", day=2),
        "out": str(out),
    }


def test_two_runs_with_other_seeds_show_no_change_beyond_intervals(runs):
    comparison = cfl.compare_runs(runs["fair"], runs["fair seed 1"])
    assert not comparison.any_change and comparison.changes == [], comparison.text()
    assert comparison.paired_rows > 0 and comparison.shared_sources == SOURCES, "paired over every source"
    assert comparison.warnings == [], "same model, generator, judge, dataset and metric parameters"
    assert comparison.notes == ["What the generation stage did differs: seed 0 vs 1."]
    assert comparison.summary().startswith("No change beyond intervals")


def test_a_planted_bias_appears_with_its_paired_difference(runs):
    comparison = compare_runs(runs["fair"], runs["biased"])
    appeared = [c for c in comparison.changes if c.change == APPEARED]
    assert {c.key["attribute"] for c in appeared} == {"gender"}
    signed = next(c for c in appeared if c.label == "prob_gap_signed gender male→female doctor")
    assert signed.difference.rule == "paired" and signed.difference.shared_sources == SOURCES // 2
    assert signed.difference.high < -0.2 and signed.difference.beyond, "about −0.3, clear of what another seed does"
    assert comparison.b.verdict == "finding" and comparison.a.verdict == "no finding"
    assert comparison.warnings[0].startswith("The model under audit differs: A clip-fair (sha256:fair) vs B clip-ased")
    text = comparison.text()
    assert "WARNING: The model under audit differs" in text and "appeared  prob_gap_signed gender male→female doctor" in text


def test_a_consistent_shift_smaller_than_what_another_seed_does_is_not_a_change(tmp_path):
    """Sources cannot see what one generator seed does to every image; the control can: a shift
    that the paired interval alone would call is a change only when it clears the control's band."""
    noisy = [publish(tmp_path / "noisy", f"run-{i}", pool(seed=0, seed_shift=shift)) for i, shift in enumerate((0.0, 0.005))]
    quiet = [publish(tmp_path / "quiet", f"run-{i}", pool(seed=0, seed_shift=shift, control_sd=0.0002))
             for i, shift in enumerate((0.0, 0.02))]
    row = next(c for c in compare_runs(*quiet).changes if c.label == "prob_gap_signed gender male→female doctor")
    assert row.change in (APPEARED, CHANGED) and row.difference.rule == "paired" and row.difference.low > 0.015
    assert row.difference.beyond and row.difference.allowance < 0.015
    runs = [read_run(uri) for uri in noisy]
    paired = PairedDifferences(runs[0].manifest, runs[0].predictions, runs[1].manifest, runs[1].predictions, 0.999)
    low, _, _ = paired.interval(("generated", "gender", "male→female", "prob_gap_signed", "doctor"))
    assert low > 0.004, "sources alone say the gap moved"
    assert not compare_runs(*noisy).any_change, "but by less than another seed alone moves it (±band of its control)"
    assert seed_allowance({"metric": "prob_gap_signed", "control_band": 0.04}, {"metric": "prob_gap_signed", "control_band": 0.05}) == 0.05
    assert seed_allowance({"metric": "flip_rate", "control_ci_high": 0.1}, {"metric": "flip_rate", "control_ci_high": None}) == 0.1
    assert seed_allowance({"metric": "flip_rate", "control_ci_high": 0.01, "min_effect": 0.05}, {"metric": "flip_rate"}) == 0.05


def test_every_row_is_compared_on_its_own_key_and_a_synthetic_shift_only_beyond_its_min_effect(runs):
    """Synthetic-shift rows differ only by their measure (flip rate, P(doctor) signed and |Δ|, ...):
    each is compared with its own counterpart, none overwrites another."""
    findings = assess_findings(read_run(runs["fair"]).metrics)
    shift = findings.filter(pl.col("metric") == "synthetic_shift")
    assert shift["measure"].n_unique() > 1
    assert compare_runs(runs["fair"], runs["fair"]).compared == findings.filter(pl.col("value").is_not_null()).height
    scales = {"metrics": {"min_effect": {"probability": 0.01, "rating": 0.04, "words": 1.0, "lexicon": 0.01}}}
    shifted = {"metric": "synthetic_shift", "measure": "prob_gap_signed"}
    assert shift_allowance(shifted, shifted, scales, {"metrics": {"min_effect": {"probability": 0.03}}}) == 0.03
    rated = {"metric": "synthetic_shift", "measure": "rating_gap_signed"}
    assert shift_allowance(rated, rated, scales, scales) == 0.04
    assert shift_allowance(shifted, shifted, {}, {}) == 0.0, "a manifest without min_effect allows nothing"


def with_text_rows(shift: float):
    """The image's pair rows again as ``text`` modality rows (their controls too), the text's gaps moved
    by ``shift``: a run that measured two modalities whose rows differ only in ``modality``."""
    def edit(metrics: pl.DataFrame) -> pl.DataFrame:
        pairs = metrics.filter(pl.col("metric").str.contains("flip_rate|prob_gap") & (pl.col("stratum") == "generated"))
        moved = pl.when(pl.col("metric").str.starts_with("control_")).then(0.0).otherwise(shift)
        text = pairs.with_columns(pl.lit("text").alias("modality"),
                                  *[(pl.col(c) + moved).alias(c) for c in ("value", "ci_low", "ci_high", "ci_low_adjusted",
                                                                           "ci_high_adjusted")])
        return pl.concat([metrics, text])
    return edit


def test_an_image_row_and_a_text_row_of_one_metric_are_compared_each_with_its_own(tmp_path):
    """Rows that differ only in ``modality`` (issue 18) are two rows: neither overwrites the other in
    ``cflab compare`` or ``--history``, a change of the text's gap is listed as the text's, and a run
    from before the column existed matches the image's rows."""
    a = publish(tmp_path, "two-a", pool(seed=0), with_text_rows(0.0))
    b = publish(tmp_path, "two-b", pool(seed=0), with_text_rows(-0.3), day=2)
    findings = assess_findings(read_run(a).metrics)
    assert set(findings["modality"]) == {"image", "text"}
    assert compare_runs(a, a).compared == findings.filter(pl.col("value").is_not_null()).height, "every row, both modalities"
    changes = compare_runs(a, b).changes
    assert changes and {c.key["modality"] for c in changes} == {"text"}, [c.label for c in changes]
    moved = next(c for c in changes if c.key["metric"] == "prob_gap_signed" and c.key["group"] == "male→female"
                 and c.key["label"] == "doctor")
    assert moved.label.endswith("(text modality)") and moved.difference.value == pytest.approx(-0.3)
    assert moved.difference.rule != "paired", "the predictions' scores are the image's readings, not the text's"
    legacy = publish(tmp_path / "old", "legacy", pool(seed=0), lambda m: m.drop("modality"))
    plain = publish(tmp_path / "new", "plain", pool(seed=0), day=2)
    assert not {c.change for c in compare_runs(legacy, plain).changes} & {ONLY_A, ONLY_B}, "a missing modality is the image's"
    names = [s.name for s in run_history(str(tmp_path)).series]
    text = [n for n in names if n.startswith("prob_gap_signed: gender male→female · doctor") and n.endswith("· text")]
    assert text, names


def test_comparability_names_each_difference_that_matters(runs):
    a = manifest("a")
    b = copy.deepcopy(a)
    assert comparability(a, b) == ([], [])
    b["run_identity"]["models"]["judge"] = "sha256:other"
    b["dataset"]["fingerprint"] = "beef"
    b["metrics"]["confidence"] = 0.9
    b["status"] = "failed"
    b["tiny_models"] = True
    warnings, notes = comparability(a, b)
    assert [w.split(":")[0] for w in warnings] == ["The judge differs", "The dataset differs", "The metric parameters differ",
                                                  "Run B is marked failed (too many failed work items)"]
    assert "confidence 0.95 vs 0.9" in warnings[2]
    assert notes == ["Tiny random-weight test models ran: their numbers mean nothing."]


def test_rows_only_one_run_has_are_listed(runs, tmp_path):
    wider = pool(seed=0).with_columns(pl.lit("age").alias("attribute"))
    both = pl.concat([pool(seed=0), wider.with_columns(pl.col("source_id") + "-age", pl.col("set_id") + "-age")])
    extra = publish(tmp_path, "wider", both)
    comparison = compare_runs(runs["fair"], extra)
    assert {c.change for c in comparison.changes} == {ONLY_B}
    assert any(c.key["attribute"] == "age" for c in comparison.changes)


def test_compare_html_is_written_and_escaped(runs, tmp_path):
    comparison = compare_runs(runs["fair"], runs["biased"], out=str(tmp_path / "compare.html"))
    html = (tmp_path / "compare.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'id="comparability"' in html and "appeared" in html
    assert "The model under audit differs" in html and html.count("<script") == 1
    assert comparison.html() == html


def test_cflab_compare_prints_the_table_and_writes_compare_html(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", runs["fair"], runs["fair seed 1"]]) == EXIT_OK
    out = capsys.readouterr().out
    assert "No change beyond intervals" in out and f"compare: {Path('compare.html')}" in out
    assert (tmp_path / "compare.html").is_file()
    assert main(["compare", runs["fair"], runs["biased"], "--out", str(tmp_path / "b.html")]) == EXIT_OK
    assert "appeared" in capsys.readouterr().out and (tmp_path / "b.html").is_file()
    assert main(["compare", runs["fair"]]) == EXIT_USAGE
    assert "needs two runs, RUN_A RUN_B (got 1)" in capsys.readouterr().err
    assert main(["compare", runs["fair"], str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert f"no run at {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_history_charts_each_headline_number_over_the_runs_and_marks_comparability_breaks(runs, tmp_path, capsys):
    history = run_history(runs["out"])
    assert [r.run_id for r in history.runs] == ["fair-0", "biased-0", "fair-1"], "oldest first"
    assert history.breaks == [1, 2], "the biased run's model differs from the fair runs'"
    names = [s.name for s in history.series]
    assert names[:2] == ["findings called", "judge pass rate"]
    assert any(name.startswith("prob_gap_signed: gender male→female · doctor") for name in names), names
    called = next(s for s in history.series if s.name.startswith("prob_gap_signed: gender male→female · doctor"))
    assert [p.emphasis for p in called.points] == ["", "called", ""]
    assert main(["compare", "--history", runs["out"]]) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 complete run(s)" in out and f"history: {runs['out']}/history.html" in out
    html = Path(runs["out"], "history.html").read_text()
    assert html.count('<figure class="plot">') == len(history.series)
    with pytest.raises(UserError, match="no runs under"):
        run_history(str(tmp_path / "empty"))
    assert main(["compare", "--history", runs["out"], runs["fair"]]) == EXIT_USAGE


@pytest.mark.s3
def test_compare_and_history_read_and_write_s3(s3_bucket):
    out = f"s3://{s3_bucket}/audits"
    a = publish(out, "fair-0", pool(seed=0))
    b = publish(out, "biased-0", pool(seed=0, shift=0.3), model="sha256:biased", day=2)
    comparison = compare_runs(a, b, out=f"{out}/compare.html")
    assert comparison.counts[APPEARED] > 0 and comparison.a.run_uri == a
    history = run_history(out)
    assert [r.run_id for r in history.runs] == ["fair-0", "biased-0"]
    assert history.write(f"{out}/history.html") == f"{out}/history.html"
    assert exists(f"{out}/compare.html") and exists(f"{out}/history.html")
