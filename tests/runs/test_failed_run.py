"""A failed run says so: over ``runtime.max_failed_fraction`` failed work items, a run is published
marked failed (manifest, report, ``cflab report``), is not "complete", and ``cflab audit`` exits 1
with one line naming the commonest error."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from counterfactual_lab.flows.cli import EXIT_OK, EXIT_OVER_LIMIT, main
from counterfactual_lab.errors import DataOverLimit, TooManyFailedItems
from counterfactual_lab.runs.manifest import build_manifest
from counterfactual_lab.runs.publisher import MANIFEST_NAME, REPORT_NAME, RunPublisher, is_complete
from counterfactual_lab.runs.failure import count_failed_items, error_kind, failure_banner
from counterfactual_lab.runs.reader import read_run
from counterfactual_lab.report.text import format_headline


def records(failed_errors: list[str | None], ok: int) -> pl.DataFrame:
    """A candidate table (one row per work item): ``ok`` made, one failed row per error."""
    statuses = ["generated"] * ok + ["failed"] * len(failed_errors)
    return pl.DataFrame({"status": statuses, "error": [None] * ok + list(failed_errors)},
                        schema={"status": pl.String, "error": pl.String})


# ---- the rule ----


def test_a_run_fails_only_above_the_limit_and_names_the_commonest_error():
    memory = "MemoryError: Unable to allocate 21.4 GiB for an array with shape (1, 4, 125000, 125000)"
    unreadable = "source image out/images/ab.png unreadable: FileNotFoundError: [Errno 2] No such file"
    # 1 of 10 = 10%: at the default limit, not over it.
    assert not count_failed_items(records([memory], ok=9), 0.1).over_limit
    failure = count_failed_items(records([memory, memory, unreadable], ok=7), 0.1)
    assert (failure.failed, failure.planned, failure.over_limit) == (3, 10, True)
    assert (failure.commonest_error, failure.commonest_count) == (memory, 2)
    line = failure.message("out/sample-1")
    assert "\n" not in line
    assert line.startswith("3 of 10 work items failed (30.0%, over runtime.max_failed_fraction 10.0%)")
    assert f"commonest error (2 items): {memory}" in line and line.endswith("published as failed: out/sample-1")
    # Grouped by exception type, whatever the paths in the messages.
    other_paths = [unreadable.replace("ab.png", f"{n}.png") for n in range(3)]
    failure = count_failed_items(records([memory, memory, *other_paths], ok=0), 0.1)
    assert failure.commonest_count == 3 and "FileNotFoundError" in failure.commonest_error
    assert error_kind(unreadable) == "FileNotFoundError" and error_kind("weird failure: x") == "weird failure"
    # Nothing planned (an evaluate-only dataset: its candidate frame has no columns): nothing failed.
    assert not count_failed_items(pl.DataFrame(), 0.0).over_limit


def test_failed_work_items_are_counted_over_candidate_rows_not_images():
    """Two work items (the gender and the age reconstruction of one source) share one image:
    when it fails, both items failed. 2 of 3 items is over a 50% limit; 1 of 2 images is not."""
    from counterfactual_lab.generation.candidates import candidates_frame
    from counterfactual_lab.generation.records import generation_counts
    from counterfactual_lab.generation.records import GenerationRecord
    from counterfactual_lab.plan.work_items import WorkItem, unique_by_content_key

    def item(attribute: str, key: str) -> WorkItem:
        return WorkItem(source_id="r1", source_key="s" * 64, source_image_uri="out/images/s.png", caption="a man",
                        attribute=attribute, source_value="male", target_value="male", seed=0,
                        counterfactual_caption="a man", explanation="", instruction="", generator="g",
                        content_key=key, variant="reconstruction")

    items = [item("gender", "shared"), item("age", "shared"), item("gender", "other")]
    made = [GenerationRecord("shared", None, "failed", error="RuntimeError: boom"),
            GenerationRecord("other", "out/images/other.png", "generated")]
    assert len(unique_by_content_key(items)) == len(made) == 2
    candidates = candidates_frame(items, made, "img2img")
    failure = count_failed_items(candidates, 0.5)
    assert (failure.failed, failure.planned, failure.over_limit) == (2, 3, True)
    assert failure.manifest_entry()["unit"].startswith("work items")
    assert generation_counts(made)["failed"] == 1  # images


def test_max_failed_fraction_is_a_config_key_with_a_small_default():
    from counterfactual_lab.config.audit_config import RuntimeSection

    assert RuntimeSection().max_failed_fraction == 0.1
    assert RuntimeSection(max_failed_fraction=0).max_failed_fraction == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="max_failed_fraction"):
            RuntimeSection(max_failed_fraction=bad)
    assert issubclass(TooManyFailedItems, DataOverLimit)  # cflab exits 1, like other data limits


# ---- what a failed run looks like to its readers ----


def publish_run_with(tmp_path: Path, failure: dict | None) -> str:
    from counterfactual_lab.report.html import render_report

    publisher = RunPublisher(str(tmp_path / "out"), "sample-1", "sample")
    publisher.write_table("quarantine", pl.DataFrame({"id": [], "reason": []}, schema={"id": pl.String, "reason": pl.String}))
    manifest = build_manifest(
        run_id="sample-1", config={}, dataset={"name": "sample", "uri": "data", "fingerprint": "f"},
        models={"generator": {"model": "m", "weights_sha256": {}}},
        runtime={"device": "cpu", "dtype": "float32"},
        metrics={"bootstrap_seed": 0, "bootstrap_samples": 50, "confidence": 0.95},
        row_accounting={"rows_in": 8, "valid": 8, "quarantined": 0, "planned": 8, "kept": 0, "dropped": 0, "failed": 8},
        generation_counts={"generated": 0, "cache_hits": 0, "failed": 8, "oom_halvings": 0}, cache_hits=0,
        tables=dict(publisher.written), started_at=datetime.now(timezone.utc), finished_at=datetime.now(timezone.utc),
        tiny_models=False, failure=failure,
    )
    html = render_report(manifest=manifest, metrics=pl.DataFrame(), counterfactuals=pl.DataFrame(),
                         predictions=pl.DataFrame(), load_image=lambda uri: None)
    manifest["report"] = publisher.write_text(REPORT_NAME, html)
    publisher.write_manifest(manifest)
    return publisher.run_uri


def test_a_failed_run_is_finished_but_not_complete_and_says_so_first(tmp_path):
    failure = count_failed_items(records(["RuntimeError: boom"] * 8, ok=0), 0.1).manifest_entry()
    run_uri = publish_run_with(tmp_path / "failed", failure)
    manifest = json.loads(Path(run_uri, MANIFEST_NAME).read_text())
    assert manifest["status"] == "failed"
    assert manifest["failure"]["failed_items"] == 8 and manifest["failure"]["commonest_error"] == "RuntimeError: boom"
    assert not is_complete(run_uri)  # the next audit of this config and data runs it again
    banner = failure_banner(manifest)
    assert banner.startswith("RUN FAILED: 8 of 8 work items failed (100.0%")
    body = Path(run_uri, REPORT_NAME).read_text().split("<body>", 1)[1]
    assert body.lstrip().startswith('<p id="run-failed" class="run-failed">RUN FAILED: 8 of 8')
    assert "<title>FAILED: " in Path(run_uri, REPORT_NAME).read_text()
    run = read_run(run_uri)
    assert run.failed and format_headline(run).splitlines()[0] == banner

    complete = publish_run_with(tmp_path / "complete", None)
    assert json.loads(Path(complete, MANIFEST_NAME).read_text())["status"] == "complete"
    assert is_complete(complete) and not read_run(complete).failed
    assert 'id="run-failed"' not in Path(complete, REPORT_NAME).read_text()
    assert format_headline(read_run(complete)).startswith("run sample-1")
    # A manifest from before `status` existed was a complete run.
    legacy = json.loads(Path(complete, MANIFEST_NAME).read_text())
    del legacy["status"]
    Path(complete, MANIFEST_NAME).write_text(json.dumps(legacy))
    assert is_complete(complete)
    # A damaged manifest vouches for nothing.
    Path(complete, MANIFEST_NAME).write_text("{not json")
    assert not is_complete(complete)


# ---- end to end: cflab audit over a config whose every item fails ----


def run_cli(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cflab: error:")]


@pytest.mark.prefect
@pytest.mark.slow
def test_an_audit_whose_items_all_fail_is_published_failed_and_exits_1(
    prefect_server, tiny_models, tmp_path_factory, capsys, monkeypatch
):
    """Every call of the real img2img pipeline raises (an injected fault standing in for the
    MemoryError of the hardening probe's huge resolution: configs that cannot make an image are
    now refused before the run starts), so each of the 8 work items fails on its own. Judge and
    evaluation still run."""
    import diffusers

    from audit_runs import audit_home, generate_batch_calls, write_config

    def broken_call(self, *args, **kwargs):
        raise RuntimeError("injected: the pipeline cannot make this image")

    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "__call__", broken_call)

    inputs = audit_home(tmp_path_factory, tiny_models)
    root = tmp_path_factory.mktemp("failed-run")
    out = root / "out"
    # The older plan (no reconstructions or controls) keeps the count at one item per row.
    failing = {"seeds_per_target": 1, "batch_size": 8, "reconstruction": False}
    config = write_config(root / "audit.yaml", inputs, str(out), generation=failing)

    capsys.readouterr()
    code, stdout = run_cli(["audit", "--config", config])
    lines = error_lines(capsys.readouterr().err)
    assert code == EXIT_OVER_LIMIT and stdout == ""
    assert len(lines) == 1
    assert lines[0].startswith("cflab: error: 8 of 8 work items failed (100.0%, over runtime.max_failed_fraction 10.0%)")
    assert "commonest error (8 items): RuntimeError: " in lines[0]
    run_dir = Path(lines[0].rsplit("published as failed: ", 1)[1])
    assert run_dir.parent == out

    # Published what it had, marked failed.
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["status"] == "failed"
    failure = manifest["failure"]
    assert (failure["failed_items"], failure["planned_items"], failure["commonest_error_count"]) == (8, 8, 8)
    assert failure["commonest_error"].startswith("RuntimeError: ")
    assert manifest["row_accounting"]["failed"] == 8 and manifest["row_accounting_problems"] == []
    for name in ("counterfactuals", "predictions", "metrics", "quarantine"):
        assert (run_dir / f"{name}.parquet").is_file(), name
    counterfactuals = pl.read_parquet(run_dir / "counterfactuals.parquet")
    assert set(counterfactuals["status"]) == {"failed"} and counterfactuals["error"].null_count() == 0
    report = (run_dir / REPORT_NAME).read_text()
    assert report.split("<body>", 1)[1].lstrip().startswith('<p id="run-failed" class="run-failed">RUN FAILED: 8 of 8')

    # cflab report shows it, banner first, and exits 1 too.
    code, stdout = run_cli(["report", str(run_dir)])
    lines = error_lines(capsys.readouterr().err)
    assert code == EXIT_OVER_LIMIT
    assert stdout.splitlines()[0].startswith("RUN FAILED: 8 of 8 work items failed")
    assert len(lines) == 1 and lines[0].startswith("cflab: error: RUN FAILED: 8 of 8")

    # Not complete: the same audit runs again (it is not "already complete"); with a limit that
    # tolerates every failure it completes, in the same run folder (runtime is not the run's identity).
    tolerant = write_config(root / "tolerant.yaml", inputs, str(out), generation=failing, runtime={"max_failed_fraction": 1.0})
    with generate_batch_calls() as batches:
        code, stdout = run_cli(["audit", "--config", tolerant])
    assert code == EXIT_OK and batches != []  # the failed batch ran again
    assert f"run: {run_dir}" in stdout
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["status"] == "complete" and "failure" not in manifest
    assert 'id="run-failed"' not in (run_dir / REPORT_NAME).read_text()


@pytest.mark.prefect
@pytest.mark.slow
def test_with_reconstructions_a_failed_run_counts_work_items_like_its_row_accounting(
    prefect_server, tiny_models, tmp_path_factory, capsys, monkeypatch
):
    """The same injected fault with reconstructions and controls on, over two attributes: an
    img2img reconstruction (and control) is one image shared by the gender and the age items of
    its source and seed, so there are fewer images than work items. The failure counts work
    items, exactly as ``row_accounting`` does; ``generation_counts`` counts images."""
    import diffusers

    from audit_runs import audit_home, write_config

    def broken_call(self, *args, **kwargs):
        raise RuntimeError("injected: the pipeline cannot make this image")

    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "__call__", broken_call)

    inputs = audit_home(tmp_path_factory, tiny_models)
    root = tmp_path_factory.mktemp("failed-run-sets")
    config = write_config(
        root / "audit.yaml", inputs, str(root / "out"),
        attributes={"gender": ["female", "male"], "age": ["young", "elderly"]},
        generation={"seeds_per_target": 1, "keep_per_target": 1, "batch_size": 16, "reconstruction": True},
    )
    capsys.readouterr()
    code, stdout = run_cli(["audit", "--config", config])
    lines = error_lines(capsys.readouterr().err)
    assert code == EXIT_OVER_LIMIT and len(lines) == 1, lines
    run_dir = Path(lines[0].rsplit("published as failed: ", 1)[1])
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    counterfactuals = pl.read_parquet(run_dir / "counterfactuals.parquet")
    accounting, failure, images = manifest["row_accounting"], manifest["failure"], manifest["generation_counts"]

    planned = counterfactuals.height
    assert set(counterfactuals["variant"]) == {"reconstruction", "counterfactual"} and counterfactuals["control"].any()
    assert (failure["failed_items"], failure["planned_items"]) == (accounting["failed"], accounting["planned"]) == (planned, planned)
    assert failure["commonest_error_count"] == planned and failure["failed_fraction"] == 1.0
    assert lines[0].startswith(f"cflab: error: {planned} of {planned} work items failed (100.0%")
    # Images: one per content key, fewer than the work items that share them.
    assert images["failed"] == counterfactuals["content_key"].n_unique() < planned
    assert manifest["count_units"]["generation_counts"].startswith("images")
    assert manifest["count_units"]["failure"].startswith("work items")
