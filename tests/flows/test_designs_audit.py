"""One lean tiny-model audit with issue 18's designs (part A): the three modalities and an intersection.

8 rows, gender and age, ``attributes.intersections: [[gender, age]]`` (cells and img2img's joint
edits), ``audit.modalities: [image, text, both]`` with ``{person}`` in the label prompt; one seed per
target, 2 steps at 32 px. The arithmetic of each design is checked on hand-built frames
(tests/metrics/test_modalities.py, tests/metrics/test_intersections.py); here: the rows are written,
the report renders them, ``cflab report`` prints them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from audit_runs import assert_accounting_closes, audit_home, run_audit, write_config
from cli_runs import cflab, env_without_prefect_api

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(prefect_server, tiny_models, tmp_path_factory):
    inputs = audit_home(tmp_path_factory, tiny_models)
    out = str(tmp_path_factory.mktemp("designs-out"))
    config = write_config(
        tmp_path_factory.mktemp("designs-config") / "audit.yaml", inputs, out,
        attributes={"gender": ["female", "male"], "age": ["young", "elderly"], "intersections": [["gender", "age"]]},
        generation={"seeds_per_target": 1},
        audit={"prompt": "a photo of a {person} who is a {label}", "modalities": ["image", "text", "both"],
               "queries": [], "min_group_size": 2},
    )
    return run_audit(config, out)


def test_every_pair_row_comes_in_each_modality_and_the_rest_in_image(run):
    assert_accounting_closes(run)
    metrics = run.metrics
    pairs = metrics.filter(pl.col("metric").is_in(["flip_rate", "prob_gap_signed", "control_flip_rate"]))
    assert set(pairs["modality"]) == {"image", "text", "both"}
    assert set(metrics.filter(pl.col("metric").str.starts_with("selection_rate"))["modality"]) == {"image"}
    # The text modality's control reads one image with one word: no change at all.
    text_control = metrics.filter((pl.col("metric") == "control_prob_gap_abs") & (pl.col("modality") == "text")
                                  & pl.col("value").is_not_null())
    assert text_control.height and (text_control["value"] == 0).all()
    # Each pool row is asked once per word its pairs need: the predictions say which.
    assert {"person", "person_value"} <= set(run.predictions.columns)
    assert {"woman", "man"} <= set(run.predictions["person"].drop_nulls())


def test_the_intersection_has_cells_and_joint_transitions(run):
    attributes = set(run.metrics["attribute"])
    assert {"gender | age=young", "age | gender=female", "gender+age"} <= attributes
    joint = run.metrics.filter((pl.col("attribute") == "gender+age") & (pl.col("metric") == "flip_rate")
                               & pl.col("group").is_not_null())
    for transition in joint["group"].to_list():
        before, after = transition.split("→")
        assert all(a != b for a, b in zip(before.split(" "), after.split(" "))), transition  # both change at once
    cells = run.metrics.filter(pl.col("attribute").str.contains(" | ", literal=True) & pl.col("in_family"))
    assert cells.height > 0  # intersection rows count in the run's family
    assert run.metrics.filter(pl.col("in_family"))["comparisons"].n_unique() == 1


def test_the_report_and_cflab_report_show_the_modalities_side_by_side(run):
    html = Path(run.report_uri).read_text()
    assert 'id="modalities"' in html and "carries the gap" in html and 'id="intersections"' in html
    printed = cflab("report", run.run_uri, env=env_without_prefect_api())
    assert printed.returncode == 0, printed.stderr
    assert "Which modality carries the gap" in printed.stdout
    assert "Intersections:" in printed.stdout and "gender+age: joint edits" in printed.stdout
    # A cell per value the sources have (the sample's ages include middle-aged, which no edit targets).
    assert "cell(s) (age=elderly; age=middle-aged; age=young)" in printed.stdout, printed.stdout
