"""The report's intersections view (report/intersections.py) on a hand-built metrics table."""

from __future__ import annotations

import polars as pl

from counterfactual_lab.report.intersections import intersection_lines, intersections_text
from counterfactual_lab.report.templating import render_fragment


def metric_row(attribute: str, group: str | None, in_family: bool, note: str | None = None) -> dict:
    return {"metric": "prob_gap_signed", "attribute": attribute, "group": group, "in_family": in_family, "note": note}


METRICS = pl.DataFrame([
    metric_row("gender+age", "female young→male elderly", True),
    metric_row("gender+age", "male elderly→female young", True),
    metric_row("gender+age", "male young→female elderly", False),  # not in the family: not counted
    metric_row("gender | age=young", "male→female", True),
    metric_row("gender | age=elderly", "male→female", False,
               "intersection cell age=elderly: 2 source image(s), fewer than audit.min_group_size=3"),
    metric_row("gender", "male→female", True),
])


def manifest(method: str) -> dict:
    return {"config": {"generation": {"method": method},
                       "attributes": {"gender": ["female", "male"], "age": ["young", "elderly"],
                                      "intersections": [["gender", "age"]]}}}


def test_joint_transitions_cells_and_small_cells_are_named():
    lines = intersection_lines(METRICS, manifest("img2img"))
    assert lines[0] == "gender+age: joint edits changing every attribute at once, 2 transition(s) in the family."
    assert lines[1] == ("gender: 2 cell(s) (age=elderly; age=young); too few source images for an interval in "
                        "gender | age=elderly (audit.min_group_size).")
    assert len(lines) == 2  # img2img carries joint edits: no note about the method


def test_a_method_that_cannot_carry_a_joint_edit_is_named():
    lines = intersection_lines(METRICS.filter(pl.col("attribute") != "gender+age"), manifest("inpaint"))
    assert lines[-1].startswith("generation.method inpaint cannot carry two changes in one prompt")


def test_the_terminal_and_html_show_them_and_a_run_without_intersections_shows_nothing():
    assert intersections_text(METRICS, manifest("img2img"))[:2] == ["", "Intersections:"]
    html = render_fragment("_intersections.html.j2", intersections=intersection_lines(METRICS, manifest("img2img")))
    assert "<li>gender: " in html and "age=elderly" in html
    escaped = render_fragment("_intersections.html.j2", intersections=["<script>x</script>"])
    assert "&lt;script&gt;" in escaped and "<script>" not in escaped
    plain = METRICS.filter(pl.col("attribute") == "gender")
    assert intersections_text(plain, {}) == [] and intersection_lines(plain, {}) == []
