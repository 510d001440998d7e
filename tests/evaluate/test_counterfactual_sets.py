"""Evaluate-only datasets: the SocialCounterfactuals layout read through the dataset spec, and its pool.

SocialCounterfactuals stores each image's two varied attributes as (type, value) column pairs
(``a1_type``, ``a1``, ``a2_type``, ``a2``) and mixes subsets in one file: race × gender sets,
physical × gender sets (physical = obese, skinny, ...: an attribute with no vocabulary here).
"""

from __future__ import annotations

import io
from itertools import permutations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from counterfactual_lab.errors import ConfigError
from counterfactual_lab.evaluate.pool import POOL_SCHEMA, pool_from_counterfactual_sets
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.ingest.validation import ingest_and_validate

SOCIAL_COLUMNS = {"counterfactual_set": "counterfactual_set", "attribute_pairs": [["a1_type", "a1"], ["a2_type", "a2"]]}


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 9 % 256, i * 31 % 256, i * 71 % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


def social_counterfactuals(path) -> None:
    """Two subsets in one file, as the dataset ships them, plus two rows validation must reject."""
    rows = []
    for race in ("White", "Black"):  # set RG: race-gender
        for gender in ("male", "female"):
            rows.append(("RG", "race", race, "gender", gender))
    for physical in ("obese", "skinny"):  # set PG: physical-gender
        for gender in ("male", "female"):
            rows.append(("PG", "physical", physical, "gender", gender))
    rows.append(("RG", "Race", "martian", "gender", "male"))  # outside the vocabulary
    rows.append(("RG", "gender", "male", "gender", "female"))  # one attribute given twice, differently
    table = pa.table(
        {
            "image": pa.array([png(i) for i in range(len(rows))], pa.binary()),
            "caption": [f"a photo of a {r[2]} {r[4]} doctor" for r in rows],
            "counterfactual_set": [r[0] for r in rows],
            "a1_type": [r[1] for r in rows], "a1": [r[2] for r in rows],
            "a2_type": [r[3] for r in rows], "a2": [r[4] for r in rows],
        }
    )
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("social")
    social_counterfactuals(root / "part-0.parquet")
    spec = DatasetSpec.parse_spec({"name": "social", "uri": str(root), "columns": SOCIAL_COLUMNS})
    return ingest_and_validate(spec)


def test_type_value_pairs_become_attribute_columns(outcome):
    valid = outcome.valid.sort("caption")
    assert {"gender", "race", "age", "other_attributes", "counterfactual_set"} <= set(valid.columns)
    by_caption = {r["caption"]: r for r in valid.iter_rows(named=True)}
    assert len(by_caption) == 8
    rg = by_caption["a photo of a Black female doctor"]
    assert (rg["race"], rg["gender"], rg["age"], rg["other_attributes"]) == ("Black", "female", None, None)
    pg = by_caption["a photo of a obese male doctor"]
    # "physical" has no vocabulary: not an attribute column, but kept as context
    assert (pg["race"], pg["gender"], pg["other_attributes"]) == (None, "male", "physical=obese")


def test_bad_pairs_are_quarantined_with_reasons(outcome):
    reasons = {r["reason"]: r["detail"] for r in outcome.quarantine.iter_rows(named=True)}
    assert outcome.rows_in == 10 and outcome.quarantine.height == 2
    assert set(reasons) == {"unknown_attribute_value"}
    details = sorted(outcome.quarantine["detail"].to_list())
    assert details[0].startswith("gender value \"conflicting values 'male' and 'female'\" is not in the vocabulary")
    assert details[1].startswith("race value 'martian' is not in the vocabulary")


def test_mixed_subsets_form_comparison_groups_that_differ_in_one_attribute(outcome):
    pool = pool_from_counterfactual_sets(outcome.valid, ["gender", "race"])
    assert dict(pool.schema) == POOL_SCHEMA
    assert pool.height == 2 * 8
    assert set(pool["variant"]) == {"counterfactual"} and not pool["control"].any()
    assert pool["seed"].null_count() == pool.height
    caption_of = dict(zip(outcome.valid["id"], outcome.valid["caption"]))
    set_of = dict(zip(outcome.valid["id"], outcome.valid["counterfactual_set"]))
    assert [set_of[i] for i in pool["id"]] == pool["source_id"].to_list()  # the cluster is the dataset's set

    def groups(attribute: str) -> set[frozenset[tuple[str, str]]]:
        rows = pool.filter(pl.col("attribute") == attribute)
        return {
            frozenset((caption_of[i].removeprefix("a photo of a ").removesuffix(" doctor"), g)
                      for i, g in zip(part["id"], part["group"]))
            for part in rows.partition_by("set_id")
        }

    assert groups("gender") == {
        frozenset({("White male", "male"), ("White female", "female")}),
        frozenset({("Black male", "male"), ("Black female", "female")}),
        # physical is held fixed although it is no audited attribute
        frozenset({("obese male", "male"), ("obese female", "female")}),
        frozenset({("skinny male", "male"), ("skinny female", "female")}),
    }
    assert groups("race") == {
        frozenset({("White male", "White"), ("Black male", "Black")}),
        frozenset({("White female", "White"), ("Black female", "Black")}),
        # the physical-gender subset never varies race: singletons, group null, nothing to pair
        frozenset({("obese male", None)}), frozenset({("obese female", None)}),
        frozenset({("skinny male", None)}), frozenset({("skinny female", None)}),
    }
    sources = pool.group_by("set_id").agg(pl.col("source_id").unique())
    assert sources["source_id"].list.len().max() == 1  # a comparison group lies within one set
    assert set(pool["source_id"]) == {"RG", "PG"}


def test_every_ordered_pair_of_a_comparison_group_is_formable():
    """Hand-built: a race-only set of three and an intersectional set (race × gender)."""
    valid = pl.DataFrame(
        {
            "id": ["a1", "a2", "a3", "b1", "b2", "b3", "b4"],
            "counterfactual_set": ["A", "A", "A", "B", "B", "B", "B"],
            "race": ["White", "Black", "Asian", "White", "White", "Black", "Black"],
            "gender": ["male", "male", "male", "male", "female", "male", "female"],
            "content_key": [f"k{i}" for i in range(7)], "caption": ["c"] * 7, "image_uri": [f"u{i}" for i in range(7)],
            "label": ["doctor", None, "nurse", None, None, None, None],
        }
    )
    pool = pool_from_counterfactual_sets(valid, ["race", "gender"])
    race = pool.filter(pl.col("attribute") == "race")
    members = {s: sorted(zip(p["id"], p["group"])) for s, p in zip(race["set_id"].unique(maintain_order=True), race.partition_by("set_id", maintain_order=True))}
    pairs = sorted(
        (a, b) for group in members.values() for (a, ga), (b, gb) in permutations(group, 2) if ga != gb
    )
    # Set A: all 6 ordered pairs of its three races (not only those from the value that sorts first).
    assert [p for p in pairs if p[0].startswith("a")] == [
        ("a1", "a2"), ("a1", "a3"), ("a2", "a1"), ("a2", "a3"), ("a3", "a1"), ("a3", "a2")
    ]
    # Set B by race: only rows of the same gender pair up.
    assert [p for p in pairs if p[0].startswith("b")] == [("b1", "b3"), ("b2", "b4"), ("b3", "b1"), ("b4", "b2")]
    gender = pool.filter(pl.col("attribute") == "gender")
    sizes = sorted(gender.group_by("set_id").len()["len"].to_list())
    assert sizes == [1, 1, 1, 2, 2]  # A never varies gender; B pairs by race
    assert pool.filter(pl.col("id") == "a3")["label"].to_list() == ["nurse", "nurse"]
    assert set(pool["source_id"]) == {"A", "B"}
    # the ids are stable: the same data, the same set ids
    assert pool_from_counterfactual_sets(valid, ["race", "gender"])["set_id"].to_list() == pool["set_id"].to_list()


def test_counterfactual_sets_need_their_columns():
    valid = pl.DataFrame({"id": ["a"], "content_key": ["k"], "caption": ["c"], "image_uri": ["u"], "gender": ["male"]})
    with pytest.raises(ValueError, match="counterfactual_set"):
        pool_from_counterfactual_sets(valid, ["gender"])
    with pytest.raises(ValueError, match=r"missing \['race'\]"):
        pool_from_counterfactual_sets(valid.with_columns(pl.lit("s").alias("counterfactual_set")), ["gender", "race"])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"attributes": {"gender": "g"}, "attribute_pairs": [["t", "v"]]}, "either 'attributes'"),
        ({"attribute_pairs": []}, "'attribute_pairs' is empty"),
        ({"attribute_pairs": [["a1", "a1"]]}, "needs two different column names"),
        ({"attribute_pairs": [["a1_type"]]}, "attribute_pairs"),
    ],
)
def test_the_spec_refuses_a_malformed_pair_layout(columns, message):
    with pytest.raises(ConfigError, match=message):
        DatasetSpec.parse_spec({"uri": "x", "columns": columns})


def test_missing_pair_columns_are_named(tmp_path):
    from counterfactual_lab.errors import DatasetUnreadable

    pq.write_table(
        pa.table({"image": pa.array([png(1)], pa.binary()), "caption": ["c"], "a1_type": ["race"], "a1": ["Black"]}),
        tmp_path / "d.parquet",
    )
    spec = DatasetSpec.parse_spec({"uri": str(tmp_path), "columns": SOCIAL_COLUMNS})
    with pytest.raises(DatasetUnreadable, match="a2_type"):
        ingest_and_validate(spec)
