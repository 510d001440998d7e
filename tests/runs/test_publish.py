"""Publishing a run: atomic tables, manifest last, interrupted runs marked incomplete; and the manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from counterfactual_lab.errors import UserError
from counterfactual_lab.runs.manifest import build_manifest
from counterfactual_lab.runs.manifest import check_row_accounting
from counterfactual_lab.runs.publisher import RunPublisher, is_complete
from counterfactual_lab.runs.reader import read_run

ACCOUNTING = {"rows_in": 10, "valid": 9, "quarantined": 1, "planned": 6, "kept": 4, "dropped": 1, "failed": 1}
RUNTIME = {"device": "cpu", "dtype": "float32"}
METRICS = {"bootstrap_seed": 0, "bootstrap_samples": 1000, "confidence": 0.95}
AUDIT_MODEL = {"model": "tiny-clip", "revision": None, "weights_sha256": {"model.safetensors": "ab" * 32}}


def metrics() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "metric": ["flip_rate", "demographic_parity_difference"],
            "attribute": ["gender", "gender"],
            "group": ["male→female", None],
            "label": [None, "doctor"],
            "query": [None, None],
            "value": [0.25, 0.1],
            "ci_low": [0.1, 0.02],
            "ci_high": [0.4, 0.2],
            "n": [40, 80],
        }
    )


def quarantine() -> pl.DataFrame:
    return pl.DataFrame({"id": ["q1"], "reason": ["missing caption"], "detail": [None]}, schema_overrides={"detail": pl.String})


def manifest_for(publisher: RunPublisher, tables: dict[str, str]) -> dict:
    return build_manifest(
        run_id=publisher.run_id,
        config={"audit": {"labels": ["doctor", "nurse"]}, "output": {"uri": Path("/tmp/out")}},
        dataset={"name": publisher.dataset_name, "uri": "/data/sample", "fingerprint": "f00d"},
        models={"audit": AUDIT_MODEL, "generator": {"model": "tiny-img2img", "revision": "r1", "weights_sha256": {}}},
        runtime=RUNTIME,
        metrics=METRICS,
        row_accounting=ACCOUNTING,
        generation_counts={"generated": 5, "cached": 1},
        cache_hits=1,
        tables=tables,
        started_at=datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc),
        finished_at=datetime(2025, 1, 1, 12, 5, tzinfo=timezone.utc),
        tiny_models=True,
    )


def publish_complete_run(publisher: RunPublisher) -> dict[str, str]:
    tables = {
        "metrics": publisher.write_table("metrics", metrics()),
        "quarantine": publisher.write_table("quarantine", quarantine()),
    }
    publisher.write_text("report.html", "<!DOCTYPE html><p>report</p>")
    publisher.write_manifest(manifest_for(publisher, tables))
    return tables


def files_under(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*") if p.is_file())


def test_tables_carry_run_id_and_dataset(tmp_path):
    publisher = RunPublisher(str(tmp_path / "out"), "run-a", "sample")
    uri = publisher.write_table("metrics", metrics())
    assert uri == str(tmp_path / "out" / "run-a" / "metrics.parquet") == publisher.write_table("metrics.parquet", metrics())
    back = pl.read_parquet(uri)
    assert back["run_id"].unique().to_list() == ["run-a"]
    assert back["dataset"].unique().to_list() == ["sample"]
    assert back.drop("run_id", "dataset").equals(metrics())
    # Many runs scan together and stay apart.
    RunPublisher(str(tmp_path / "out"), "run-b", "other").write_table("metrics", metrics())
    both = pl.scan_parquet(str(tmp_path / "out" / "*" / "metrics.parquet")).collect()
    assert sorted(both.group_by("run_id", "dataset").len().rows()) == [("run-a", "sample", 2), ("run-b", "other", 2)]


def test_manifest_written_last_marks_the_run_complete(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    tables = {"metrics": publisher.write_table("metrics", metrics())}
    assert not publisher.is_complete()
    uri = publisher.write_manifest(manifest_for(publisher, tables))
    assert uri.endswith("run-1/manifest.json")
    assert publisher.is_complete() and is_complete(publisher.run_uri)
    written = json.loads(Path(uri).read_text())
    assert written["tables"] == tables and written["run_id"] == "run-1"


def test_manifest_refuses_to_vouch_for_missing_tables(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    publisher.write_table("metrics", metrics())
    manifest = manifest_for(publisher, {"metrics": publisher.uri_of("metrics.parquet"), "predictions": publisher.uri_of("predictions.parquet")})
    with pytest.raises(UserError, match="tables missing: predictions"):
        publisher.write_manifest(manifest)
    assert not publisher.is_complete()


def test_exception_midway_leaves_run_incomplete(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    with pytest.raises(RuntimeError):
        publisher.write_table("metrics", metrics())
        raise RuntimeError("evaluation crashed before predictions were written")
    assert not is_complete(publisher.run_uri)
    with pytest.raises(UserError, match=r"run at .*run-1 is incomplete: no manifest.json \(the run was interrupted"):
        read_run(publisher.run_uri)


def test_killed_process_leaves_run_incomplete(tmp_path):
    # A real process dies (SIGKILL-like os._exit) after its tables and before its manifest.
    script = textwrap.dedent(
        f"""
        import os, polars as pl
        from counterfactual_lab.runs.publisher import RunPublisher
        p = RunPublisher({str(tmp_path)!r}, "run-killed", "sample")
        p.write_table("metrics", pl.DataFrame({{"metric": ["flip_rate"], "value": [0.5]}}))
        os._exit(137)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120)
    assert result.returncode == 137, result.stderr
    run_uri = str(tmp_path / "run-killed")
    assert files_under(tmp_path) == ["metrics.parquet"]
    assert not is_complete(run_uri)
    with pytest.raises(UserError, match="incomplete: no manifest.json"):
        read_run(run_uri)


def test_failed_serialisation_writes_nothing(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    publisher.write_table("metrics", metrics())
    before = (tmp_path / "run-1" / "metrics.parquet").read_bytes()
    unwritable = metrics().with_columns(pl.Series("obj", [object(), object()], dtype=pl.Object))
    with pytest.raises(Exception):
        publisher.write_table("metrics", unwritable)
    with pytest.raises(Exception):
        publisher.write_table("predictions", unwritable)
    assert files_under(tmp_path) == ["metrics.parquet"], "no temp file, no half table"
    assert (tmp_path / "run-1" / "metrics.parquet").read_bytes() == before, "the old table is untouched"


def test_failed_file_write_removes_its_temp_file(tmp_path, monkeypatch):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    publisher.write_table("metrics", metrics())
    before = (tmp_path / "run-1" / "metrics.parquet").read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        publisher.write_table("metrics", metrics().head(1))
    with pytest.raises(OSError, match="No space left"):
        publisher.write_table("predictions", metrics())
    monkeypatch.undo()
    assert files_under(tmp_path) == ["metrics.parquet"]
    assert (tmp_path / "run-1" / "metrics.parquet").read_bytes() == before


def test_republishing_a_run_marks_it_incomplete_until_its_new_manifest(tmp_path):
    first = RunPublisher(str(tmp_path), "run-1", "sample")
    publish_complete_run(first)
    assert is_complete(first.run_uri)
    retry = RunPublisher(str(tmp_path), "run-1", "sample")
    retry.write_table("metrics", metrics().head(1))
    assert not is_complete(retry.run_uri), "a stale manifest must not vouch for new tables"
    publish_complete_run(retry)
    assert is_complete(retry.run_uri)


def test_mark_incomplete_comes_before_any_other_file_is_rewritten(tmp_path):
    """What ``--force`` does first: validation outputs written directly into the run folder
    afterwards never sit beside the old manifest."""
    from counterfactual_lab.runs.publisher import mark_incomplete

    first = RunPublisher(str(tmp_path), "run-1", "sample")
    publish_complete_run(first)
    rerun = RunPublisher(str(tmp_path), "run-1", "sample")
    assert rerun.mark_incomplete() is True
    assert not is_complete(rerun.run_uri)
    with pytest.raises(UserError, match="is incomplete: no manifest.json"):
        read_run(rerun.run_uri)
    assert files_under(tmp_path) == ["metrics.parquet", "quarantine.parquet", "report.html"]
    assert mark_incomplete(rerun.run_uri) is False  # nothing left to remove: not an error
    publish_complete_run(rerun)
    assert is_complete(rerun.run_uri)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_names_stay_inside_the_run(tmp_path, name):
    with pytest.raises(UserError, match="plain file name"):
        RunPublisher(str(tmp_path), "run-1", "sample").write_table(name, metrics())


def test_write_text_cannot_fake_a_manifest(tmp_path):
    with pytest.raises(UserError, match="write_manifest"):
        RunPublisher(str(tmp_path), "run-1", "sample").write_text("manifest.json", "{}")


@pytest.mark.s3
def test_publish_and_read_back_on_s3(s3_bucket):
    publisher = RunPublisher(f"s3://{s3_bucket}/audits", "run-s3", "sample")
    assert publisher.run_uri == f"s3://{s3_bucket}/audits/run-s3"
    publisher.write_table("metrics", metrics())
    assert not publisher.is_complete()
    with pytest.raises(UserError, match="incomplete"):
        read_run(publisher.run_uri)
    tables = publish_complete_run(publisher)
    assert tables["metrics"] == f"s3://{s3_bucket}/audits/run-s3/metrics.parquet"
    assert is_complete(publisher.run_uri)
    run = read_run(publisher.run_uri)
    assert run.metrics.drop("run_id", "dataset").equals(metrics())
    assert run.quarantine["reason"].to_list() == ["missing caption"]
    assert run.predictions.is_empty() and run.manifest["tiny_models"] is True

    import boto3

    keys = sorted(
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]
    )
    assert keys == [f"audits/run-s3/{n}" for n in ("manifest.json", "metrics.parquet", "quarantine.parquet", "report.html")]


# --- manifest -----------------------------------------------------------------------------


def test_manifest_records_provenance_and_is_json(tmp_path):
    publisher = RunPublisher(str(tmp_path), "run-1", "sample")
    manifest = manifest_for(publisher, {})
    text = json.dumps(manifest, allow_nan=False)
    assert json.loads(text) == manifest
    assert manifest["config"]["output"]["uri"] == "/tmp/out"
    assert manifest["started_at"] == "2025-01-01T12:00:00+00:00" and manifest["duration_s"] == 300.0
    assert manifest["models"]["audit"] == AUDIT_MODEL
    assert manifest["runtime"] == RUNTIME and manifest["metrics"] == METRICS
    assert manifest["dataset"]["fingerprint"] == "f00d"
    assert manifest["row_accounting_problems"] == []
    versions = manifest["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    for dist in ("torch", "diffusers", "transformers", "tokenizers", "prefect", "polars", "scipy", "numpy"):
        assert versions[dist], dist


def test_building_a_manifest_imports_no_heavy_library():
    script = textwrap.dedent(
        """
        import sys
        from counterfactual_lab.runs.manifest import build_manifest
        build_manifest(run_id="r", config={}, dataset={"name": "d", "uri": "u", "fingerprint": "f"}, models={},
                       runtime={"device": "cpu", "dtype": "float32"},
                       metrics={"bootstrap_seed": 0, "bootstrap_samples": 50, "confidence": 0.95},
                       row_accounting={}, generation_counts={}, cache_hits=0, tables={},
                       started_at="a", finished_at="b", tiny_models=False)
        heavy = [m for m in ("prefect", "polars", "pyarrow", "torch", "great_expectations") if m in sys.modules]
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _manifest_with(**changes):
    fields = dict(
        run_id="r", config={}, dataset={"name": "d", "uri": "u", "fingerprint": "f"}, models={"audit": AUDIT_MODEL},
        runtime=RUNTIME, metrics=METRICS, row_accounting={}, generation_counts={}, cache_hits=0, tables={},
        started_at="a", finished_at="b", tiny_models=False,
    )
    return build_manifest(**{**fields, **changes})


def test_manifest_rejects_a_dataset_without_fingerprint():
    with pytest.raises(ValueError, match="fingerprint"):
        _manifest_with(dataset={"name": "d", "uri": "u"})


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"models": {"judge": {"model": "m", "revision": None}}}, "model 'judge' needs 'weights_sha256'"),
        ({"runtime": {"device": "cpu"}}, "runtime needs 'dtype'"),
        ({"metrics": {"bootstrap_samples": 50, "confidence": 0.95}}, "metrics needs 'bootstrap_seed'"),
    ],
)
def test_manifest_refuses_to_leave_out_what_reproduces_the_run(changes, problem):
    with pytest.raises(ValueError, match=problem):
        _manifest_with(**changes)


def test_row_accounting_closes():
    assert check_row_accounting(ACCOUNTING) == []


def test_row_accounting_problems_name_the_gap():
    rows = dict(ACCOUNTING, valid=7)
    assert check_row_accounting(rows) == [
        "rows in (10) != valid (7) + quarantined (1) = 8: 2 rows unaccounted for"
    ]
    items = dict(ACCOUNTING, failed=3)
    assert check_row_accounting(items) == [
        "planned work items (6) != kept (4) + dropped (1) + failed (3) = 8: 2 items unaccounted for"
    ]
    partial = {k: v for k, v in ACCOUNTING.items() if k != "failed"}
    assert check_row_accounting(partial) == ["row accounting has no 'failed' count"]
    assert check_row_accounting(dict(ACCOUNTING, kept=-1))[0] == "row accounting 'kept' is negative (-1)"
    assert "whole number" in check_row_accounting(dict(ACCOUNTING, kept=1.5))[0]
