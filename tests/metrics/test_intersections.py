"""Intersections (``attributes.intersections``) on hand-worked frames: cells, joint transitions, small cells.

The gender pool is metric_frames.generated_predictions (four sources, one set each); the sources'
ages, read from their originals under the attribute age: s1 young, s2 elderly, s3 young, s4 elderly.

  cell gender | age=young:   s1 male→female Δ −0.5 (flips), s3 female→male Δ +0.05
                             flip rate 1/2, mean Δ −0.225; control Δ s1 −0.1, s3 +0.2 → +0.05
  cell gender | age=elderly: s2 male→female Δ −0.1, s4 female→male Δ −0.1
                             flip rate 0, mean Δ −0.1; control Δ s2 +0.05, s4 0 → +0.025
"""

from __future__ import annotations

import polars as pl
import pytest
from metric_frames import generated_predictions, one, row

from counterfactual_lab.config.audit_config import AuditConfig, AuditSection
from counterfactual_lab.config.intersections import (
    joint_targets,
    joint_values,
    split_stratified,
    stratified_name,
)
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.findings import _mark_confounded
from counterfactual_lab.metrics.intersections import changes_every_part

AGES = {"s1": "young", "s2": "elderly", "s3": "young", "s4": "elderly"}
VALUES = {"gender": ["female", "male"], "age": ["young", "elderly"]}


def with_ages(frame: pl.DataFrame) -> pl.DataFrame:
    ages = [row(f"{s}-o", s, "original", age, 0.5, attribute="age") for s, age in AGES.items()]
    return pl.concat([frame, pl.DataFrame(ages)], how="diagonal_relaxed")


def audit(**overrides) -> AuditSection:
    return AuditSection(labels=["doctor", "nurse"], queries=[], bootstrap_samples=200, **{"min_group_size": 1, **overrides})


def test_every_metric_is_stratified_by_the_sources_other_value():
    metrics = compute_metrics(with_ages(generated_predictions()), pl.DataFrame(), pl.DataFrame(), audit(), VALUES,
                              intersections=[["gender", "age"]])
    young, elderly = "gender | age=young", "gender | age=elderly"
    assert one(metrics, "flip_rate", attribute=young, group=None)["value"] == pytest.approx(0.5)
    assert one(metrics, "prob_gap_signed", attribute=young, group=None, label="doctor")["value"] == pytest.approx(-0.225)
    assert one(metrics, "prob_gap_signed", attribute=young, group="male→female", label="doctor")["value"] == pytest.approx(-0.5)
    assert one(metrics, "control_prob_gap_signed", attribute=young, label="doctor")["value"] == pytest.approx(0.05)
    assert one(metrics, "flip_rate", attribute=elderly, group=None)["value"] == 0
    assert one(metrics, "prob_gap_signed", attribute=elderly, group=None, label="doctor")["value"] == pytest.approx(-0.1)
    assert one(metrics, "control_prob_gap_signed", attribute=elderly, label="doctor")["value"] == pytest.approx(0.025)
    # The whole attribute is still there, as before.
    assert one(metrics, "prob_gap_signed", attribute="gender", group=None, label="doctor")["value"] == pytest.approx(-0.1625)
    # Group and observational rows are stratified too (the originals of s1 and s3 in the young cell).
    assert one(metrics, "selection_rate", attribute=young, stratum="observational", group="male", label="doctor")["n"] == 1


def test_small_cells_say_so_and_keep_their_values_without_intervals():
    metrics = compute_metrics(with_ages(generated_predictions()), pl.DataFrame(), pl.DataFrame(), audit(min_group_size=3),
                              VALUES, intersections=[["gender", "age"]])
    cell = one(metrics, "prob_gap_signed", attribute="gender | age=young", group=None, label="doctor")
    assert cell["value"] == pytest.approx(-0.225) and cell["ci_low"] is None
    assert "intersection cell age=young: 2 source image(s), fewer than audit.min_group_size=3" in cell["note"]
    assert not cell["in_family"]


def test_intersection_rows_count_in_the_runs_family():
    predictions = with_ages(pl.concat([generated_predictions()] + [
        generated_predictions().with_columns(pl.col(c) + f"-{k}" for c in ("id", "source_id", "set_id", "content_key"))
        for k in range(1, 3)]))
    ages = [row(f"s{i}-{k}-o", f"s{i}-{k}", "original", AGES[f"s{i}"], 0.5, attribute="age")
            for i in range(1, 5) for k in range(1, 3)]
    predictions = pl.concat([predictions, pl.DataFrame(ages)], how="diagonal_relaxed")
    without = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), audit(min_group_size=2), VALUES)
    metrics = compute_metrics(predictions, pl.DataFrame(), pl.DataFrame(), audit(min_group_size=2), VALUES,
                              intersections=[["gender", "age"]])
    cells = metrics.filter(pl.col("attribute").str.contains(" | ", literal=True) & pl.col("in_family"))
    assert cells.height > 0
    m = metrics.filter(pl.col("in_family"))["comparisons"].unique().to_list()
    assert m == [int(metrics["in_family"].sum())]
    assert m[0] == int(without["in_family"].sum()) + cells.height  # every cell row adds to m


def test_joint_pairs_change_every_attribute_of_the_intersection():
    """An evaluate-only set of three members: female young, male young, male elderly. Of its six ordered
    pairs only female young ↔ male elderly change both attributes; the others are each attribute's own."""
    members = [("a", "female young", 0.2), ("b", "male young", 0.5), ("c", "male elderly", 0.9)]
    rows = [row(m, "set1", "counterfactual", g, p, set_id="set1-joint", attribute="gender+age") for m, g, p in members]
    metrics = compute_metrics(pl.DataFrame(rows), pl.DataFrame(), pl.DataFrame(), audit(), VALUES, design="evaluate_only",
                              intersections=[["gender", "age"]])
    transitions = set(metrics.filter((pl.col("metric") == "prob_gap_signed") & pl.col("group").is_not_null())["group"])
    assert transitions == {"female young→male elderly", "male elderly→female young"}
    assert one(metrics, "prob_gap_signed", group="female young→male elderly", label="doctor")["value"] == pytest.approx(0.7)
    pairs = pl.DataFrame({"attribute": ["gender"], "from_group": ["female"], "to_group": ["male"]})
    assert changes_every_part(pairs, "gender", [["gender", "age"]], VALUES).height == 1  # not a joint attribute


def test_a_cell_is_confounded_by_its_attributes_drift_where_the_image_changed():
    """Drift is read per attribute (gender), and confounds the cell's image and both rows on the same
    transition; a text row (one image, two words) and a row of another transition stay called."""
    def called(attribute, modality, group="male→female"):
        return {"metric": "prob_gap_signed", "stratum": "generated", "attribute": attribute, "group": group,
                "modality": modality, "called": True, "verdict": "called"}
    drift = {"metric": "drift_blue", "stratum": "generated", "attribute": "gender", "group": "male→female",
             "modality": "image", "called": False, "verdict": "moved", "value": 0.02, "label": "outside_mask",
             "query": None, "ci_low_adjusted": 0.015, "ci_high_adjusted": 0.025, "confidence_adjusted": 0.99,
             "min_effect": 0.01}
    rows = [called("gender | age=young", m) for m in ("image", "text", "both")]
    rows += [called("gender | age=young", "image", group="female→male"), drift]
    _mark_confounded(rows)
    assert [r["verdict"] for r in rows[:4]] == ["confounded", "called", "confounded", "called"]


def test_names_values_and_config_of_intersections():
    assert stratified_name("gender", {"race": "Black"}) == "gender | race=Black"
    assert split_stratified("gender | race=Black, age=young") == ("gender", {"race": "Black", "age": "young"})
    assert split_stratified("gender") == ("gender", {})
    assert joint_values(["race", "gender"], {"race": ["White", "Black"], "gender": ["female", "male"]})["Black male"] == (
        "Black", "male")
    assert joint_targets(["White", "female"], {"race": ["White", "Black"], "gender": ["female", "male"]},
                         ["race", "gender"]) == [("Black", "male")]
    config = AuditConfig.parse_config({"attributes": {"race": ["White", "Black"], "gender": ["female", "male"],
                                                      "intersections": [["race", "gender"]]}})
    assert config.attributes == {"race": ["White", "Black"], "gender": ["female", "male"]}
    assert config.intersections == [["race", "gender"]]
    dumped = config.model_dump(mode="json")
    assert dumped["attributes"]["intersections"] == [["race", "gender"]] and "intersections" not in dumped
    assert AuditConfig.parse_config(dumped).intersections == [["race", "gender"]]
    assert "intersections" not in AuditConfig().model_dump()["attributes"]  # a config without them dumps as before
    for bad, message in [([["race"]], "two or more attributes"), ([["race", "age"]], "'age' is not an audited attribute"),
                         ([["race", "race"]], "twice"), ([["race", "gender"], ["gender", "race"]], "listed twice")]:
        with pytest.raises(ConfigError, match=message):
            AuditConfig.parse_config({"attributes": {"race": ["White"], "gender": ["female"], "intersections": bad}})
