"""What the report and ``cflab report`` say about people's review before there is one."""

from __future__ import annotations

import polars as pl

from counterfactual_lab.report.review_summary import review_lines


def test_an_unreviewed_run_says_how_to_review_it_and_a_run_without_images_says_nothing():
    manifest = {"tables": {"counterfactuals": "out/run-1/counterfactuals.parquet"}, "row_accounting": {"planned": 4}}
    assert review_lines(manifest, pl.DataFrame()) == [
        "People's review: none yet. Check the judge: cflab review out/run-1 --reviewer NAME, then --apply."]
    assert review_lines({"row_accounting": {"planned": 0}}, pl.DataFrame()) == []
