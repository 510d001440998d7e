"""Streaming ingest: files, folders, globs, image column layouts, derived ids, the image store."""

from __future__ import annotations

import io
import types

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.storage.images import content_key
from counterfactual_lab.ingest.read import DERIVED_ID_CHARS, ingest, read_ingested
from counterfactual_lab.ingest.source import open_dataset
from counterfactual_lab.demo.sample_dataset import write_sample_dataset
from counterfactual_lab.config.dataset_spec import ColumnMapping, DatasetSpec
from counterfactual_lab.storage.files import ImageStore


def png(colour, size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def spec(uri, **kwargs) -> DatasetSpec:
    return DatasetSpec(name="t", uri=str(uri), **kwargs)


def test_batches_stream_with_file_and_row_positions(sample_dataset):
    frames = ingest(spec(sample_dataset), batch_rows=5)
    assert isinstance(frames, types.GeneratorType)  # lazy: nothing is read before iteration
    frames = list(frames)
    assert [f.height for f in frames] == [5, 5, 5, 5, 4]
    rows = pl.concat(frames)
    assert rows["row_index"].to_list() == list(range(24))
    assert set(rows["source_file"]) == {"part-00000.parquet"}
    assert rows["image_error"].null_count() == 24
    assert (rows["width"] == 64).all() and (rows["height"] == 64).all()
    assert all(dtype != pl.Binary for dtype in rows.schema.values())  # no image bytes travel


def test_content_key_is_the_sha256_of_the_stored_image_bytes(sample_dataset):
    rows = read_ingested(spec(sample_dataset))
    table = pq.read_table(sample_dataset / "part-00000.parquet")
    original = table.column("image").combine_chunks().field("bytes").to_pylist()
    assert rows["content_key"].to_list() == [content_key(b) for b in original]


def test_folder_with_non_parquet_files_reads_fine(tmp_path):
    root = write_sample_dataset(tmp_path / "ds", rows=6, files=2)
    (root / "images").mkdir()
    (root / "images" / "x.png").write_bytes(png((1, 2, 3)))
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / ".cache").mkdir()
    (root / ".cache" / "stale.parquet").write_bytes(b"not parquet")
    source = open_dataset(spec(root))
    assert [f.rsplit("/", 1)[-1] for f in source.files] == ["part-00000.parquet", "part-00001.parquet"]
    rows = read_ingested(spec(root))
    assert rows.height == 6
    assert rows["source_file"].unique().sort().to_list() == ["part-00000.parquet", "part-00001.parquet"]


def test_glob_and_single_file_uris(tmp_path):
    root = write_sample_dataset(tmp_path / "ds", rows=6, files=3)
    assert read_ingested(spec(f"{root}/part-0000[01].parquet")).height == 4
    assert read_ingested(spec(root / "part-00002.parquet")).height == 2


def test_plain_binary_and_string_path_image_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png((200, 0, 0)))
    pq.write_table(
        pa.table({"id": ["b"], "image": pa.array([png((0, 0, 200))], pa.binary()), "caption": ["a man"]}),
        tmp_path / "binary.parquet",
    )
    pq.write_table(pa.table({"id": ["p"], "image": ["imgs/a.png"], "caption": ["a woman"]}), tmp_path / "paths.parquet")
    rows = read_ingested(spec(tmp_path)).sort("id")
    assert rows["id"].to_list() == ["b", "p"]
    assert rows["image_error"].to_list() == [None, None]
    assert rows["content_key"][1] == content_key((tmp_path / "imgs" / "a.png").read_bytes())


def test_ids_derive_from_the_content_key_when_the_column_is_absent(tmp_path):
    data = [png((i, 0, 0)) for i in range(3)]
    pq.write_table(pa.table({"image": pa.array(data, pa.binary()), "caption": ["a man"] * 3}), tmp_path / "d.parquet")
    rows = read_ingested(spec(tmp_path))
    assert rows["id"].to_list() == [content_key(d)[:DERIVED_ID_CHARS] for d in data]


def test_only_the_mapped_columns_are_read_under_their_roles(tmp_path):
    pq.write_table(
        pa.table({
            "uid": ["x"], "picture": pa.array([png((5, 5, 5))], pa.binary()), "text": ["a man"],
            "sex": ["male"], "huge_unused": pa.array([b"\0" * 1000], pa.binary()),
        }),
        tmp_path / "d.parquet",
    )
    mapping = ColumnMapping(id="uid", image="picture", caption="text", label=None, attributes={"gender": "sex"})
    source = open_dataset(spec(tmp_path, columns=mapping))
    assert "huge_unused" not in source.plan.projection()
    rows = read_ingested(spec(tmp_path, columns=mapping))
    assert rows.select("id", "caption", "gender", "label").row(0) == ("x", "a man", "male", None)


def test_images_go_to_the_store_once(sample_dataset, tmp_path):
    store = ImageStore(str(tmp_path / "out"))
    first = read_ingested(spec(sample_dataset), image_store=store)
    assert first["image_uri"].to_list() == [store.uri(k) for k in first["content_key"]]
    stored = store.get(first["content_key"][0])
    table = pq.read_table(sample_dataset / "part-00000.parquet")
    original = Image.open(io.BytesIO(table.column("image")[0]["bytes"].as_py())).convert("RGB")
    assert stored.tobytes() == original.tobytes()

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()}
    second = read_ingested(spec(sample_dataset), image_store=store)
    assert second.equals(first)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "images").iterdir()} == mtimes  # nothing rewritten


def test_missing_uri_is_unreadable(tmp_path):
    with pytest.raises(DatasetUnreadable, match="does not exist"):
        open_dataset(spec(tmp_path / "nope"))


def test_folder_without_parquet_is_unreadable(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(DatasetUnreadable, match=r"no \*\.parquet files"):
        open_dataset(spec(tmp_path))


def test_file_that_is_not_parquet_is_unreadable(tmp_path):
    bogus = tmp_path / "data.parquet"
    bogus.write_text("id,caption\n1,a man\n")
    with pytest.raises(DatasetUnreadable, match="not readable Parquet"):
        open_dataset(spec(bogus))


def test_missing_required_column_is_named(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "image": pa.array([png((1, 1, 1))], pa.binary())}), tmp_path / "d.parquet")
    with pytest.raises(DatasetUnreadable, match="lacks required column.*'caption'"):
        list(ingest(spec(tmp_path)))


def test_wrong_image_column_type_is_named(tmp_path):
    pq.write_table(pa.table({"image": [1, 2], "caption": ["a", "b"]}), tmp_path / "d.parquet")
    with pytest.raises(DatasetUnreadable, match="'image' has type int64"):
        list(ingest(spec(tmp_path)))


@pytest.mark.s3
def test_s3_missing_bucket_is_unreadable(s3_bucket):
    with pytest.raises(DatasetUnreadable, match="does not exist"):
        open_dataset(spec(f"s3://{s3_bucket}-missing/data"))


@pytest.mark.parametrize(
    "image_type, message",
    [
        (
            pa.struct([("bytes", pa.string()), ("path", pa.int64())]),
            "image struct column 'image' has field 'bytes' of type string; expected binary",
        ),
        (
            pa.struct([("bytes", pa.binary()), ("path", pa.int64())]),
            "image struct column 'image' has field 'path' of type int64; expected string",
        ),
    ],
    ids=["bytes-as-string", "path-as-int"],
)
def test_wrongly_typed_image_struct_is_one_schema_error(tmp_path, image_type, message):
    values = [{"bytes": "not bytes", "path": 7}] if image_type.field("bytes").type == pa.string() else [{"bytes": png((1, 2, 3)), "path": 7}]
    pq.write_table(pa.table({"image": pa.array(values, image_type), "caption": ["a man"]}), tmp_path / "d.parquet")
    with pytest.raises(DatasetUnreadable, match=message) as info:
        list(ingest(spec(tmp_path)))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_binary_text_column_is_a_schema_error_not_a_crash(tmp_path):
    table = pa.table({
        "id": pa.array([b"\xff\xfe not utf-8"], pa.binary()),
        "image": pa.array([png((1, 1, 1))], pa.binary()),
        "caption": ["a man"],
    })
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DatasetUnreadable, match=r"column 'id' has type binary; expected text"):
        list(ingest(spec(tmp_path)))


def test_all_null_columns_are_rows_without_image_or_caption(tmp_path):
    # pyarrow types a column of nulls as `null`: each row is then missing its value, row by row.
    pq.write_table(pa.table({"id": ["a", "b"], "image": pa.nulls(2), "caption": pa.nulls(2)}), tmp_path / "d.parquet")
    rows = read_ingested(spec(tmp_path))
    assert rows["image_error"].to_list() == ["missing_image", "missing_image"]
    assert rows["caption"].to_list() == [None, None]
