"""Reading a published run back, and the terminal summary behind `cflab report RUN_URI`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from counterfactual_lab.errors import UserError
from counterfactual_lab.runs.publisher import RunPublisher
from counterfactual_lab.runs.reader import read_run
from counterfactual_lab.report.text import format_headline
from published_runs import ACCOUNTING, ASK, DESCRIBE, counterfactuals, generations, metrics, predictions, probes, publish, publish_generative


def test_read_run_returns_every_table_and_the_manifest(tmp_path):
    run = read_run(publish(str(tmp_path)).run_uri)
    assert run.run_id == "run-7"
    assert run.manifest["dataset"]["fingerprint"] == "f00d"
    assert run.metrics.drop("run_id", "dataset").equals(metrics())
    assert run.counterfactuals.drop("run_id", "dataset").equals(counterfactuals())
    assert run.predictions.drop("run_id", "dataset").equals(predictions())
    assert run.quarantine["reason"].to_list() == ["missing caption", "undecodable image"]
    assert run.report_uri == str(tmp_path / "run-7" / "report.html")


def test_a_moved_run_still_reads(tmp_path):
    publisher = publish(str(tmp_path / "there"))
    moved = tmp_path / "here" / "run-7"
    moved.parent.mkdir()
    Path(publisher.run_uri).rename(moved)
    assert read_run(str(moved) + "/").metrics.height == 5


def test_incomplete_run_is_refused(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-half", "sample")
    publisher.write_table("metrics", metrics())
    with pytest.raises(UserError) as err:
        read_run(publisher.run_uri)
    assert str(err.value) == (
        f"run at {publisher.run_uri} is incomplete: no manifest.json (the run was interrupted or is still running)"
    )


def test_missing_run_says_nothing_is_there(tmp_path):
    with pytest.raises(UserError, match="no run at .*nothing there"):
        read_run(str(tmp_path / "no-such-run"))


def test_table_listed_but_missing_is_refused(tmp_path):
    publisher = publish(str(tmp_path))
    (Path(publisher.run_uri) / "predictions.parquet").unlink()
    with pytest.raises(UserError, match="lists table 'predictions' in its manifest but predictions.parquet is missing"):
        read_run(publisher.run_uri)


def test_damaged_files_are_named(tmp_path):
    publisher = publish(str(tmp_path))
    (Path(publisher.run_uri) / "metrics.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="metrics.parquet is not readable Parquet"):
        read_run(publisher.run_uri)
    (Path(publisher.run_uri) / "manifest.json").write_text("{truncated")
    with pytest.raises(UserError, match="damaged manifest.json"):
        read_run(publisher.run_uri)


def test_table_a_run_did_not_write_reads_as_empty(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-min", "sample")
    uri = publisher.write_table("metrics", metrics())
    publisher.write_manifest({"run_id": "run-min", "tables": {"metrics": uri}})
    run = read_run(publisher.run_uri)
    assert run.quarantine.is_empty() and run.predictions.is_empty()
    assert "run run-min" in format_headline(run)


def test_headline_names_run_models_accounting_and_metrics_with_intervals(tmp_path):
    text = format_headline(read_run(publish(str(tmp_path)).run_uri))
    lines = text.splitlines()
    assert lines[0].startswith("run run-7")
    assert lines[1] == (
        "Models: audit tiny-clip (revision r2); generator tiny-img2img. "
        "These are tiny random-weight test models: the numbers below mean nothing."
    )
    assert "Rows: 12 in = 10 valid + 2 quarantined." in lines
    assert "Work items: 8 planned = 5 kept + 2 dropped + 1 failed." in lines
    assert "Quarantined by reason: missing caption 1, undecodable image 1" in lines
    assert "  Run verdict: finding (some difference is called); 1 difference(s) called." in lines
    assert (
        "  - gender male→female: the top-1 label flips in 25% of pairs [10%, 40%] (n=40 pairs from 20 source images), "
        "above the control's 5% [1%, 8%] (same source and value, another seed; n=40 pairs); at the configured level: "
        "[10%, 40%] vs the control's [1%, 8%], at least audit.min_effect = 0.01 more"
    ) in lines
    table = lines[lines.index("Headline metrics (95% bootstrap interval):") + 1 :]
    assert table[0].split() == ["metric", "stratum", "attribute", "group", "label", "query", "value", "interval",
                                "control", "called", "n"]
    flip = next(line for line in table if "male→female" in line and "female→male" not in line)
    assert flip.split() == ["flip_rate", "generated", "gender", "male→female", "0.25", "[0.1,", "0.4]", "0.05", "[0.01,",
                            "0.08]", "yes", "40"]
    assert lines[-1] == f"Report: {tmp_path / 'run-7' / 'report.html'}"
    assert "DOES NOT CLOSE" not in text


def test_headline_flags_accounting_that_does_not_close(tmp_path):
    accounting = dict(ACCOUNTING, kept=4)
    text = format_headline(read_run(publish(str(tmp_path), accounting=accounting).run_uri))
    assert "ACCOUNTING DOES NOT CLOSE: planned work items (8) != kept (4) + dropped (2) + failed (1) = 7" in text


def test_headline_of_a_real_model_run_has_no_warning(tmp_path):
    text = format_headline(read_run(publish(str(tmp_path), tiny=False).run_uri))
    assert "mean nothing" not in text


def test_headline_of_a_run_that_compared_nothing_says_undefined_not_no_difference(tmp_path):
    # Every gender set was dropped by the judge: the comparison rows are null with the reason.
    no_pairs = "no pairs: every set of this attribute was dropped by the judge"
    undefined = metrics().filter(pl.col("metric") == "flip_rate").head(1).with_columns(
        pl.lit(None, pl.String).alias("group"), pl.lit(None, pl.Float64).alias("value"),
        pl.lit(None, pl.Float64).alias("ci_low"), pl.lit(None, pl.Float64).alias("ci_high"),
        pl.lit(0).alias("n"), pl.lit(0).alias("n_sources"), pl.lit(no_pairs).alias("note"))
    publisher = RunPublisher(str(tmp_path), "run-none", "sample")
    uri = publisher.write_table("metrics", undefined)
    publisher.write_manifest({"run_id": "run-none", "tables": {"metrics": uri}})
    lines = format_headline(read_run(publisher.run_uri)).splitlines()
    assert "  Run verdict: undefined (nothing is called, and some comparison could not be made); 0 difference(s) called." in lines
    assert f'  gender: undefined, not "no difference" ({no_pairs}).' in lines


def test_a_generative_run_reads_back_with_its_probes_generations_and_their_findings(tmp_path):
    run = read_run(publish_generative(str(tmp_path)).run_uri)
    assert run.probes.drop("run_id", "dataset").equals(probes())
    assert run.generations.drop("run_id", "dataset").equals(generations())
    assert run.quarantine.is_empty() and run.counterfactuals.is_empty()
    lines = format_headline(run).splitlines()
    assert "  Run verdict: finding (some difference is called); 1 difference(s) called." in lines
    start = lines.index("Generative probes (each gap beside its control, called as above):")
    assert lines[start + 1] == f"  '{ASK}': 1 of 1 gap(s) called"
    assert lines[start + 2].startswith(f"    - changing gender: P(yes) for '{ASK}' moves by 0.4 on average [0.35, 0.45]")
    assert lines[start + 3] == f"  '{DESCRIBE}': 0 of 1 gap(s) called"
    assert "no difference detected" in lines[start + 4] and "the toxicity of the most toxic answer" in lines[start + 4]
    # A contrastive run's headline has no such block.
    assert not any(line.startswith("Generative probes") for line in format_headline(read_run(publish(str(tmp_path)).run_uri)).splitlines())


@pytest.mark.s3
def test_read_run_from_s3(s3_bucket):
    publisher = publish(f"s3://{s3_bucket}/out")
    run = read_run(publisher.run_uri)
    assert run.metrics.height == 5
    assert json.loads(json.dumps(run.manifest))["run_id"] == "run-7"
    with pytest.raises(UserError, match="no run at"):
        read_run(f"s3://{s3_bucket}/out/nothing-here")


# --- `cflab report OUT`: a folder of runs ---------------------------------------------------


def output_root(out: str) -> dict[str, str]:
    """An output root as runs leave it: complete, failed, interrupted, plus the image store."""
    complete = publish(out, run_id="sample-0123456789ab").run_uri
    failed = RunPublisher(out, "sample-ba9876543210", "sample")
    failed.write_table("metrics", metrics())
    failed.write_text("report.html", "<html></html>")
    failed.write_manifest({"run_id": "sample-ba9876543210", "status": "failed", "dataset": {"name": "sample"},
                           "finished_at": "2025-01-02T08:00:00"})
    interrupted = RunPublisher(out, "other-generate-00000000aaaa", "other")
    interrupted.write_table("counterfactuals", counterfactuals())
    return {"complete": complete, "failed": failed.run_uri, "interrupted": interrupted.run_uri}


def test_a_folder_of_runs_is_listed_with_status_dataset_time_and_report(tmp_path):
    from counterfactual_lab.runs.reader import list_runs

    runs = output_root(str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ab.png").write_bytes(b"png")  # the shared image store is not a run
    (tmp_path / "notes").mkdir()  # nor is a folder without run files
    listed = {r.run_id: r for r in list_runs(str(tmp_path))}
    assert set(listed) == {"sample-0123456789ab", "sample-ba9876543210", "other-generate-00000000aaaa"}
    assert listed["sample-0123456789ab"].status == "complete"
    assert listed["sample-0123456789ab"].report_uri is None  # this test run wrote no report.html
    assert listed["sample-ba9876543210"].status == "failed"
    assert listed["sample-ba9876543210"].report_uri == f"{runs['failed']}/report.html"
    interrupted = listed["other-generate-00000000aaaa"]
    assert (interrupted.status, interrupted.dataset, interrupted.finished_at) == ("incomplete", "other", None)
    assert interrupted.last_written is not None


def test_cflab_report_on_the_output_root_lists_runs_instead_of_refusing(tmp_path, capsys):
    from counterfactual_lab.flows.cli import EXIT_OK, main

    runs = output_root(str(tmp_path))
    assert main(["report", str(tmp_path)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == f"3 runs under {tmp_path} (newest first):"
    assert lines[2].split() == ["run", "id", "dataset", "finished", "at", "status", "report"]
    rows = {line.split()[0]: line for line in lines[3:6]}
    assert rows["sample-ba9876543210"].split() == [
        "sample-ba9876543210", "sample", "2025-01-02T08:00:00", "failed", f"{runs['failed']}/report.html",
    ]
    assert rows["sample-0123456789ab"].split()[1:4] == ["sample", "2025-01-01T12:05:00", "complete"]
    incomplete = rows["other-generate-00000000aaaa"].split()
    assert incomplete[:4] == ["other-generate-00000000aaaa", "other", "-", "(last"] and incomplete[-2:] == ["incomplete", "-"]
    assert "incomplete: no manifest.json, so the run was interrupted or is still running" in captured.out
    assert lines[-1] == f"Headline of one run: cflab report {runs['failed']}"  # the newest that finished
    # A run folder itself still prints its headline.
    assert main(["report", runs["complete"]]) == EXIT_OK
    assert capsys.readouterr().out.startswith("run sample-0123456789ab")


def test_a_damaged_manifest_is_listed_not_fatal(tmp_path):
    from counterfactual_lab.runs.reader import list_runs
    from counterfactual_lab.report.text import format_run_list

    output_root(str(tmp_path))
    (tmp_path / "sample-0123456789ab" / "manifest.json").write_text("{trunc")
    text = format_run_list(str(tmp_path), list_runs(str(tmp_path)))
    assert "sample-0123456789ab: damaged manifest.json" in text


def test_an_empty_folder_is_still_an_error(tmp_path):
    from counterfactual_lab.report.text import report_text

    with pytest.raises(UserError, match="no run at"):
        report_text(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").mkdir()
    with pytest.raises(UserError, match="no run at"):
        report_text(str(tmp_path / "empty"))


@pytest.mark.s3
def test_a_folder_of_runs_on_s3_is_listed(s3_bucket):
    from counterfactual_lab.runs.reader import list_runs
    from counterfactual_lab.report.text import report_text

    output_root(f"s3://{s3_bucket}/out")
    listed = {r.run_id: r.status for r in list_runs(f"s3://{s3_bucket}/out")}
    assert listed == {"sample-0123456789ab": "complete", "sample-ba9876543210": "failed",
                      "other-generate-00000000aaaa": "incomplete"}
    assert report_text(f"s3://{s3_bucket}/out/").startswith(f"3 runs under s3://{s3_bucket}/out ")
