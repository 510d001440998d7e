"""The two skew protocols (``audit.skew_protocol``) and ``retrieval.parquet``: every ranking the
metrics measure, recomputed from the rankings alone; the hand ranking of the issue under both."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import compute_metrics, retrieval_table
from counterfactual_lab.metrics.rankings import RETRIEVAL_TABLE_SCHEMA, own_sets
from counterfactual_lab.metrics.retrieval import _ndkl_of_resamples
from counterfactual_lab.metrics.schema import RANKING_SCHEMA
from metric_frames import one, recompute_rankings, row

DOCTOR, NURSE = "a photo of a doctor", "a photo of a nurse"
PROTOCOLS = ("geyik", "socialcounterfactuals")


def edited_world(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """12 sources (labels doctor and nurse in turn), each an original, a reconstruction and a
    counterfactual in one set; random scores for two queries."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        source, own, other = f"s{i}", ("female", "male")[i % 3 == 0], ("male", "female")[i % 3 == 0]
        label = ("doctor", "nurse")[i % 2]
        p = float(rng.random())
        rows += [row(f"{source}-o", source, "original", own, p, label=label),
                 row(f"{source}-r", source, "reconstruction", own, p, set_id=f"{source}-0", seed=0, label=label),
                 row(f"{source}-c", source, "counterfactual", other, p, set_id=f"{source}-0", seed=0, label=label)]
    predictions = pl.DataFrame(rows)
    ids = predictions["id"].unique(maintain_order=True).to_list()
    scores = pl.DataFrame({"query": [q for q in (DOCTOR, NURSE) for _ in ids], "id": ids * 2,
                           "content_key": [f"k-{i}" for i in ids] * 2, "score": rng.random(2 * len(ids))})
    return predictions, scores


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_max_skew_and_ndkl_recomputed_from_retrieval_parquet_alone(protocol):
    predictions, scores = edited_world()
    audit = AuditSection(queries=[DOCTOR, NURSE], top_k=5, bootstrap_samples=50, min_group_size=1, skew_protocol=protocol)
    values = {"gender": ["female", "male"]}
    metrics = compute_metrics(predictions, scores, pl.DataFrame(), audit, values, design="generated")
    rankings = retrieval_table(predictions, scores, audit, values, design="generated")
    assert rankings.columns == list(RETRIEVAL_TABLE_SCHEMA) and rankings.height
    recomputed = recompute_rankings(rankings)
    assert {key[:2] for key in recomputed} == {("generated", "gender"), ("observational", "gender")}
    for (stratum, attribute, query, used), numbers in recomputed.items():
        assert used == protocol
        where = {"stratum": stratum, "attribute": attribute, "query": query}
        k = numbers["k"] if protocol == "geyik" else 2  # K = the number of groups under socialcounterfactuals
        assert numbers["k"] == k
        assert one(metrics, f"max_skew@{k}", **where)["value"] == pytest.approx(numbers["max"], abs=1e-12)
        assert one(metrics, f"min_skew@{k}", **where)["value"] == (None if numbers["min"] is None else
                                                                  pytest.approx(numbers["min"], abs=1e-12))
        assert one(metrics, "ndkl", **where)["value"] == pytest.approx(numbers["ndkl"], abs=1e-12)
    retrieval_rows = metrics.filter(pl.col("metric").str.contains("skew|ndkl"))
    for column in RANKING_SCHEMA:
        assert retrieval_rows[column].null_count() == 0, column
        assert metrics.filter(~pl.col("metric").str.contains("skew|ndkl"))[column].null_count() == \
            metrics.height - retrieval_rows.height
    if protocol == "socialcounterfactuals":
        # Each query ranks its own sets only: the doctor query the sources labelled doctor.
        doctor = rankings.filter(pl.col("query") == DOCTOR)
        assert set(doctor["source_id"]) == {f"s{i}" for i in range(0, 12, 2)}
        for stratum in ("generated", "observational"):
            mean = one(metrics, "max_skew@2", stratum=stratum, query=None)
            per_query = [v["max"] for key, v in recomputed.items() if key[0] == stratum]
            assert mean["value"] == pytest.approx(sum(per_query) / 2, abs=1e-12)
            assert mean["desired"] == "pool: each query's own mix" and mean["k"] == 2
            absent = sum(v["min"] is None for key, v in recomputed.items() if key[0] == stratum)
            assert f"a group was absent from {absent} of 2 top-2 lists" in mean["note"]
    else:
        assert rankings.filter(pl.col("query") == DOCTOR).height == rankings.filter(pl.col("query") == NURSE).height
        assert one(metrics, "max_skew@5", stratum="generated", query=DOCTOR)["desired"] == "uniform: female=0.5, male=0.5"


def hand_sets() -> tuple[pl.DataFrame, pl.DataFrame]:
    """20 images of doctors in counterfactual sets, race a/b/c 9/7/4, ranked
    a a b a b a a b a b | c … (the top 10 holds a 6, b 4, c 0). No label: their captions name the subject."""
    members = [("s1", "abc"), ("s2", "abc"), ("s3", "abc"), ("s4", "abc"), ("s5", "ab"), ("s6", "ab"), ("s7", "ab"),
               ("s8", "a"), ("s9", "a")]
    rows = [row(f"{s}-{g}", s, "counterfactual", g, 0.5, set_id=f"{s}-race", label=None, attribute="race")
            | {"caption": f"a photo of a {g} doctor"} for s, groups in members for g in groups]
    predictions = pl.DataFrame(rows)
    order = ["s1-a", "s2-a", "s1-b", "s3-a", "s2-b", "s4-a", "s5-a", "s3-b", "s6-a", "s4-b",  # top 10: a 6, b 4
             "s1-c", "s2-c", "s3-c", "s4-c", "s7-a", "s8-a", "s9-a", "s5-b", "s6-b", "s7-b"]
    assert sorted(order) == sorted(predictions["id"].to_list())
    scores = pl.DataFrame({"query": [DOCTOR] * 20, "id": order, "content_key": [f"k-{i}" for i in order],
                           "score": [1.0 - i / 20 for i in range(20)]})
    return predictions, scores


@pytest.mark.parametrize("protocol, k", [("geyik", 10), ("socialcounterfactuals", 3)])
def test_a_group_absent_from_the_top_k_leaves_min_skew_null_under_both_protocols(protocol, k):
    predictions, scores = hand_sets()
    audit = AuditSection(labels=["doctor", "nurse"], queries=[DOCTOR], top_k=10, bootstrap_samples=50, min_group_size=1,
                         skew_protocol=protocol)
    metrics = compute_metrics(predictions, scores, pl.DataFrame(), audit, {"race": ["a", "b", "c"]}, design="evaluate_only")
    assert retrieval_table(predictions, scores, audit, {"race": ["a", "b", "c"]}, design="evaluate_only").height == 20
    minimum = one(metrics, f"min_skew@{k}", query=DOCTOR)
    assert minimum["value"] is None and minimum["note"] == f"c absent from the top {k}: MinSkew is −∞"
    assert (minimum["protocol"], minimum["k"]) == (protocol, k)
    maximum = one(metrics, f"max_skew@{k}", query=DOCTOR)
    if protocol == "geyik":  # top 10 a 6/10 against D uniform 1/3
        assert maximum["value"] == pytest.approx(math.log(0.6 / (1 / 3)))
        assert maximum["desired"] == "uniform: a=0.333333, b=0.333333, c=0.333333"
    else:  # top 3 = a a b against the pool's mix 9/20, 7/20, 4/20
        assert maximum["value"] == pytest.approx(math.log((2 / 3) / (9 / 20)))
        assert maximum["desired"] == "pool: a=0.45, b=0.35, c=0.2"
        mean = one(metrics, "min_skew@3", query=None)
        assert mean["value"] is None
        assert mean["note"].startswith("a group was absent from 1 of 1 top-3 lists, where MinSkew is −∞: no mean")
        assert "counts such a list's MinSkew as 0" in mean["note"]
        assert one(metrics, "max_skew@3", query=None)["value"] == pytest.approx(maximum["value"])


def test_a_set_is_a_querys_own_when_its_label_or_a_caption_names_the_subject():
    pool = pl.DataFrame([
        row("x1", "set1", "counterfactual", "a", 0.5, label=None) | {"caption": "a photo of a Doctor at work"},
        row("x2", "set1", "counterfactual", "b", 0.5, label=None) | {"caption": "a photo of a person at work"},
        row("y1", "set2", "counterfactual", "a", 0.5, label="doctor") | {"caption": "someone"},
        row("z1", "set3", "counterfactual", "a", 0.5, label="nurse") | {"caption": "a photo of a doctorate"},
    ])
    assert sorted(own_sets(pool, "doctor", "evaluate_only")["id"]) == ["x1", "x2", "y1"]
    assert sorted(own_sets(pool, "doctor", "generated")["id"]) == ["y1"]  # edited images: the label's sets


def test_each_ndkl_resample_keeps_its_own_desired_distribution_however_close():
    # Two resamples of the same ranking whose D differ by 2e-9 (two pool mixes of a very large pool):
    # each must be measured against its own D, exactly as when computed alone.
    codes = np.array([0, 0, 1, 0, 1, 1])
    copies = np.ones((2, 6), dtype=np.int64)
    desired = np.array([[0.5, 0.5], [0.5 + 1e-9, 0.5 - 1e-9]])
    together, _ = _ndkl_of_resamples(codes, copies, 2, desired, np.array([6, 6]))
    alone, _ = _ndkl_of_resamples(codes, copies[1:], 2, desired[1:], np.array([6]))
    assert together[1] == pytest.approx(alone[0], rel=0, abs=1e-15)
    assert together[1] != together[0]
