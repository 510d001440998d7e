"""A report over 10⁴ metric rows in a real browser (headless Chromium), as a reader opens it: the verdict
and a forest plot inside the first 1280 × 800 screen, under 2 s to load and 20 MB on disk, no
console error, every section opens, the table sorts and filters, XSS payloads in labels, attribute
values, captions and ids stay inert. The screenshot is kept as a test artifact. (The report of a
real audit is opened the same way in tests/flows/test_cli_audit.py.)"""

from __future__ import annotations

import pytest
from browser import artifact_dir
from report_pages import (
    inside_first_screen,
    open_report,
    save_measurements,
    synthetic_manifest,
    synthetic_metrics,
    synthetic_tables,
)

from counterfactual_lab.report.html import image_loader, render_report

pytestmark = pytest.mark.browser
LABELS = 185  # 10,020 metric rows
MAX_LOAD_MS = 2000
MAX_BYTES = 20_000_000


@pytest.fixture(scope="module")
def large_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large-report")
    metrics = synthetic_metrics(LABELS)
    assert metrics.height >= 10_000
    html = render_report(manifest=synthetic_manifest(), metrics=metrics, load_image=image_loader(),
                         **synthetic_tables(folder / "images"))
    path = folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_a_report_over_ten_thousand_rows_answers_on_the_first_screen_and_opens_fast(chromium, large_report, tmp_path_factory):
    size = large_report.stat().st_size
    assert size < MAX_BYTES, f"{size / 1e6:.1f} MB"
    artifacts = artifact_dir(tmp_path_factory)
    measured = open_report(chromium, large_report, artifacts / "report-10k-rows.png")
    save_measurements(artifacts, "report-10k-rows", measured, size)
    assert measured["errors"] == [], "no console error, page error or dialog (the XSS payloads stay inert)"
    assert measured["outside_requests"] == []
    assert measured["load_ms"] < MAX_LOAD_MS, measured["load_ms"]
    assert measured["first_element"] == "models"
    assert inside_first_screen(measured["verdict"]) and inside_first_screen(measured["forest"]), measured
    assert measured["closed"] >= 6 and measured["opened_one_by_one"] and measured["expanded"]
    assert measured["sorted"], "a sorted column is in order"
    before, after = measured["filtered"]
    assert before.startswith("1–200 of 10020 rows") and after.startswith("1–12 of 12 rows (10020 in all)"), measured["filtered"]
    assert measured["images"] > 0 and (artifacts / "report-10k-rows.png").stat().st_size > 10_000


def test_the_size_of_a_report_does_not_grow_with_the_audit(large_report, tmp_path):
    """Ten times the labels: the same number of charts and images; only the table's data grows."""
    small = render_report(manifest=synthetic_manifest(), metrics=synthetic_metrics(18), load_image=image_loader(),
                          **synthetic_tables(tmp_path / "images"))
    large = large_report.read_text(encoding="utf-8")
    assert small.count("<svg") == large.count("<svg") and small.count("<img") == large.count("<img")
    assert len(large.split("<details", 1)[0]) < 250_000, "the first screen stays the first screen"
