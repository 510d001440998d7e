"""Validation: the suite comes from the spec, the outcome closes the row accounting, outputs land."""

from __future__ import annotations

import io
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from counterfactual_lab.ingest import validation as v
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.ingest.read import read_ingested
from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES, ColumnMapping, DatasetSpec
from counterfactual_lab.storage.files import ImageStore, read_bytes


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 7, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_rows(path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


@pytest.fixture(scope="module")
def sample_outcome(sample_dataset, tmp_path_factory):
    store = ImageStore(str(tmp_path_factory.mktemp("store")))
    return v.ingest_and_validate(DatasetSpec.for_uri(str(sample_dataset)), image_store=store)


def test_sample_dataset_is_all_valid(sample_outcome):
    assert sample_outcome.rows_in == 24
    assert sample_outcome.valid.height == 24
    assert sample_outcome.quarantined == 0
    assert sample_outcome.quarantined_fraction == 0.0
    assert sample_outcome.by_reason == {}


def test_valid_frame_follows_the_contract(sample_outcome):
    valid = sample_outcome.valid
    assert valid.columns == ["id", "content_key", "caption", "label", "image_uri", "width", "height", "age", "gender", "race"]
    assert valid.schema["width"] == pl.Int64 and valid.schema["id"] == pl.Utf8
    assert valid["id"].is_unique().all()
    assert valid["content_key"].str.len_chars().unique().to_list() == [64]
    for attribute in ("age", "gender", "race"):
        assert set(valid[attribute]) <= set(DEFAULT_VOCABULARIES[attribute])
    assert all(uri.endswith(f"/images/{key}.png") for uri, key in zip(valid["image_uri"], valid["content_key"]))


def test_image_uri_is_null_without_a_store(sample_dataset):
    outcome = v.ingest_and_validate(DatasetSpec.for_uri(str(sample_dataset)), batch_rows=10)
    assert outcome.valid["image_uri"].null_count() == 24


def test_suite_is_built_from_the_spec(sample_outcome):
    suite = sample_outcome.expectations["suite"]
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "race") in kinds
    assert ("expect_column_value_lengths_to_be_between", "caption") in kinds
    race = next(e for e in suite["expectations"] if e["kwargs"].get("column") == "race")
    assert race["kwargs"]["value_set"] == [r.casefold() for r in DEFAULT_VOCABULARIES["race"]]
    schema = sample_outcome.expectations["schema"]
    assert {r["expectation_config"]["kwargs"]["column"] for r in schema["results"]} >= {"image", "caption"}
    assert sample_outcome.expectations["success"] is True


def test_a_spec_vocabulary_changes_what_is_valid(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {
        "id": ["1", "2", "3"], "image": pa.array([png(i) for i in range(3)], pa.binary()),
        "caption": ["a man", "a woman", "a person"], "gender": ["Man", "woman", "male"],
    })
    spec = DatasetSpec(uri=str(tmp_path / "d"), vocabularies={"gender": ["man", "woman"]})
    outcome = v.ingest_and_validate(spec)
    assert outcome.valid["gender"].to_list() == ["man", "woman"]
    assert outcome.quarantine.select("id", "reason").rows() == [("3", v.REASON_UNKNOWN_ATTRIBUTE)]


def test_failures_are_reported_by_great_expectations(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {
        "id": ["1", "2"], "image": pa.array([png(1), png(2)], pa.binary()), "caption": ["a man", None],
    })
    outcome = v.ingest_and_validate(DatasetSpec(uri=str(tmp_path / "d")))
    assert outcome.expectations["success"] is False
    results = outcome.expectations["chunks"][0]["results"]
    not_null = next(r for r in results if r["expectation_config"]["type"] == "expect_column_values_to_not_be_null"
                    and r["expectation_config"]["kwargs"]["column"] == "caption")
    assert not_null["success"] is False
    assert not_null["result"]["unexpected_count"] == 1
    assert "unexpected_index_list" not in not_null["result"]  # per-row lists live in quarantine.parquet


def test_duplicates_are_found_across_chunks_and_files(tmp_path):
    for part in range(3):
        write_rows(tmp_path / "d" / f"p{part}.parquet", {
            "id": [f"x{i}" for i in range(4)],
            "image": pa.array([png(part * 10 + i) for i in range(4)], pa.binary()),
            "caption": ["a man"] * 4,
        })
    outcome = v.ingest_and_validate(DatasetSpec(uri=str(tmp_path / "d")), batch_rows=3, chunk_rows=5)
    assert outcome.valid["id"].to_list() == ["x0", "x1", "x2", "x3"]
    assert outcome.by_reason == {v.REASON_DUPLICATE_ID: 8}
    assert len(outcome.expectations["chunks"]) == 2  # 12 rows in chunks of at least 5


def test_chunking_does_not_change_the_outcome(sample_dataset):
    spec = DatasetSpec.for_uri(str(sample_dataset))
    one = v.ingest_and_validate(spec, batch_rows=24)
    many = v.ingest_and_validate(spec, batch_rows=5, chunk_rows=10)
    assert one.valid.equals(many.valid)


def test_validate_rows_matches_the_streaming_path(sample_dataset):
    spec = DatasetSpec.for_uri(str(sample_dataset))
    two_step = v.validate_rows(spec, read_ingested(spec))
    assert two_step.valid.equals(v.ingest_and_validate(spec).valid)


def test_counterfactual_set_column_is_kept(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {
        "id": ["1", "2"], "image": pa.array([png(1), png(2)], pa.binary()), "caption": ["a man", "a woman"],
        "gender": ["male", "female"], "set_id": ["s1", "s1"],
    })
    spec = DatasetSpec(uri=str(tmp_path / "d"), columns=ColumnMapping(counterfactual_set="set_id"))
    outcome = v.ingest_and_validate(spec)
    assert outcome.valid["counterfactual_set"].to_list() == ["s1", "s1"]


def test_missing_required_column_is_unreadable_via_the_schema_suite(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {"id": ["1"], "caption": ["a man"]})
    with pytest.raises(DatasetUnreadable, match=r"lacks required column\(s\) 'image'"):
        v.ingest_and_validate(DatasetSpec(uri=str(tmp_path / "d")))


def test_explicitly_mapped_attribute_column_is_required(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {"image": pa.array([png(1)], pa.binary()), "caption": ["a man"]})
    spec = DatasetSpec(uri=str(tmp_path / "d"), columns=ColumnMapping(attributes={"gender": "sex"}))
    with pytest.raises(DatasetUnreadable, match="'sex'"):
        v.ingest_and_validate(spec)


def test_empty_dataset(tmp_path):
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("caption", pa.string())])
    (tmp_path / "d").mkdir()
    pq.write_table(schema.empty_table(), tmp_path / "d" / "a.parquet")
    outcome = v.ingest_and_validate(DatasetSpec(uri=str(tmp_path / "d")))
    assert (outcome.rows_in, outcome.valid.height, outcome.quarantined, outcome.quarantined_fraction) == (0, 0, 0, 0.0)


def test_write_validation_outputs(tmp_path):
    write_rows(tmp_path / "d" / "a.parquet", {
        "id": ["1", "2", "3"], "image": pa.array([png(1), b"nope", png(3)], pa.binary()),
        "caption": ["a man", "a woman", " "],
    })
    outcome = v.ingest_and_validate(DatasetSpec(uri=str(tmp_path / "d")))
    out = tmp_path / "out"
    v.write_validation_outputs(outcome, str(out))
    summary = json.loads((out / "validation.json").read_text())
    assert summary == {
        "rows_in": 3, "valid": 1, "quarantined": 2, "quarantined_fraction": pytest.approx(2 / 3),
        "by_reason": {v.REASON_BLANK_CAPTION: 1, v.REASON_UNDECODABLE: 1},
    }
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert quarantine.select("id", "reason").rows() == [("2", v.REASON_UNDECODABLE), ("3", v.REASON_BLANK_CAPTION)]
    expectations = json.loads((out / "expectations.json").read_text())
    assert expectations["success"] is False and expectations["chunks"]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.s3
def test_write_validation_outputs_to_s3(sample_outcome, s3_bucket):
    v.write_validation_outputs(sample_outcome, f"s3://{s3_bucket}/runs/r1")
    summary = json.loads(read_bytes(f"s3://{s3_bucket}/runs/r1/validation.json", max_bytes=2**20))
    assert summary["rows_in"] == 24 and summary["valid"] == 24
    quarantine = pl.read_parquet(io.BytesIO(read_bytes(f"s3://{s3_bucket}/runs/r1/quarantine.parquet", max_bytes=2**26)))
    assert quarantine.columns[:2] == ["id", "reason"]
