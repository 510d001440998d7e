"""The sample dataset: deterministic, HF image layout, captions agree with the attribute columns."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from counterfactual_lab.flows.cli import main
from counterfactual_lab.errors import UserError
from counterfactual_lab.demo.sample_dataset import LABELS, write_sample_dataset
from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES


def read(root) -> pa.Table:
    return pq.read_table(sorted(root.glob("*.parquet")))


def test_layout_and_types(sample_dataset):
    table = read(sample_dataset)
    assert table.num_rows == 24
    assert table.column_names == ["id", "image", "caption", "gender", "age", "race", "label"]
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    first = table.column("image")[0].as_py()
    image = Image.open(io.BytesIO(first["bytes"]))
    assert image.size == (64, 64) and image.format == "PNG"
    assert first["path"].endswith(".png")
    assert (sample_dataset / "README.md").exists()


def test_attributes_come_from_the_default_vocabularies(sample_dataset):
    rows = read(sample_dataset).to_pylist()
    for attribute in ("gender", "age", "race"):
        assert {r[attribute] for r in rows} <= set(DEFAULT_VOCABULARIES[attribute])
    assert {r["label"] for r in rows} == set(LABELS)
    assert len({r["id"] for r in rows}) == 24


def test_captions_agree_with_the_attributes(sample_dataset):
    for row in read(sample_dataset).to_pylist():
        words = row["caption"].split()
        noun, pronoun = ("man", "his") if row["gender"] == "male" else ("woman", "her")
        assert noun in words and pronoun in words, row["caption"]
        assert row["age"] in words and row["race"] in row["caption"], row["caption"]


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = read(write_sample_dataset(tmp_path / "a", rows=8, seed=3))
    b = read(write_sample_dataset(tmp_path / "b", rows=8, seed=3))
    c = read(write_sample_dataset(tmp_path / "c", rows=8, seed=4))
    assert a.equals(b)
    assert not a.equals(c)


def test_images_differ_between_rows(sample_dataset):
    images = [r["bytes"] for r in read(sample_dataset).column("image").to_pylist()]
    assert len(set(images)) == len(images)


def test_files_and_image_size(tmp_path):
    root = write_sample_dataset(tmp_path / "s", rows=10, files=3, image_size=32)
    assert sorted(p.name for p in root.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = read(root)
    assert table.num_rows == 10
    assert Image.open(io.BytesIO(table.column("image")[0].as_py()["bytes"])).size == (32, 32)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="rows"):
        write_sample_dataset(tmp_path, rows=0)
    with pytest.raises(UserError, match="image_size"):
        write_sample_dataset(tmp_path, rows=2, image_size=4)


def test_cli_sample_dataset(tmp_path, capsys):
    assert main(["sample-dataset", str(tmp_path / "cli"), "--rows", "6", "--seed", "1", "--image-size", "32"]) == 0
    assert "wrote 6 rows" in capsys.readouterr().out
    assert read(tmp_path / "cli").num_rows == 6
    assert main(["sample-dataset", str(tmp_path / "bad"), "--image-size", "4"]) == 2
    assert "image_size" in capsys.readouterr().err
