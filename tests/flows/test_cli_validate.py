"""`cflab validate`: exit codes 0/1/2, printed accounting, output files, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from counterfactual_lab.flows.cli import main


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def one_bad_in_ten(tmp_path_factory):
    """10 rows, one with an undecodable image: 10% quarantined."""
    root = tmp_path_factory.mktemp("ten")
    images = [png(i) for i in range(9)] + [b"garbage"]
    pq.write_table(
        pa.table({"id": [str(i) for i in range(10)], "image": pa.array(images, pa.binary()), "caption": ["a man"] * 10}),
        root / "d.parquet",
    )
    return root


def test_valid_dataset_exits_0_and_writes_outputs(sample_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["validate", str(sample_dataset), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows read: 24" in printed and "valid: 24" in printed and "quarantined: 0" in printed
    summary = json.loads((out / "validation.json").read_text())
    assert (summary["rows_in"], summary["valid"], summary["quarantined"], summary["by_reason"]) == (24, 24, 0, {})
    assert pl.read_parquet(out / "quarantine.parquet").columns[:2] == ["id", "reason"]
    assert (out / "expectations.json").exists()


def test_over_the_limit_exits_1(one_bad_in_ten, tmp_path, capsys):
    assert main(["validate", str(one_bad_in_ten), "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "quarantined: 1 (10.0%)" in captured.out
    assert "undecodable_image: 1" in captured.out
    assert "over the limit" in captured.err
    assert pl.read_parquet(tmp_path / "quarantine.parquet")["id"].to_list() == ["9"]


def test_within_a_raised_limit_exits_0(one_bad_in_ten, tmp_path):
    assert main(["validate", str(one_bad_in_ten), "--out", str(tmp_path), "--max-invalid-fraction", "0.1"]) == 0


def test_spec_file_with_uri_override(one_bad_in_ten, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: ten\nuri: /does/not/matter\nlimits:\n  caption_max_chars: 3\n")
    assert main(["validate", str(one_bad_in_ten), "--spec", str(spec), "--out", str(tmp_path / "o"), "--max-invalid-fraction", "1"]) == 0
    summary = json.loads((tmp_path / "o" / "validation.json").read_text())
    assert summary["by_reason"] == {"caption_too_long": 9, "undecodable_image": 1}


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cflab: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_missing_path_exits_2_with_one_line(tmp_path, capsys):
    code = main(["validate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "does not exist", "nowhere")
    assert not (tmp_path / "o").exists()


def test_not_parquet_exits_2(tmp_path, capsys):
    (tmp_path / "d.parquet").write_text("id,caption\n")
    code = main(["validate", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "not readable Parquet")


def test_wrong_schema_exits_2(tmp_path, capsys):
    pq.write_table(pa.table({"text": ["a man"]}), tmp_path / "d.parquet")
    code = main(["validate", str(tmp_path), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "'image'", "'caption'")


def test_bad_spec_file_exits_2(tmp_path, capsys):
    code = main(["validate", "--spec", str(tmp_path / "missing.yaml")])
    assert_one_line_error(code, capsys.readouterr().err, "missing.yaml")


def test_usage_error_exits_2(capsys):
    assert main(["validate", "x", "--max-invalid-fraction", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


@pytest.mark.s3
def test_missing_bucket_exits_2(s3_bucket, tmp_path, capsys):
    code = main(["validate", f"s3://{s3_bucket}-nope/data", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "does not exist")


def test_a_fresh_process_reports_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from counterfactual_lab.flows.cli import main; sys.exit(main())",
         "validate", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120,
    )
    assert_one_line_error(result.returncode, result.stderr, "does not exist")
