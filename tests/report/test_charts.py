"""The report's charts (matplotlib to inline SVG) and its templates: text stays text, nothing
reaches a page unescaped, the templates ship with the package."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from counterfactual_lab.report.charts import IntervalRow, TrendPoint, interval_svg, trend_svg
from counterfactual_lab.report.templating import environment, render_fragment

PACKAGE = Path(__file__).resolve().parents[2] / "counterfactual_lab"
EVIL = "<script>alert('x')</script>&\"$x$ $y$"


def texts(svg: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<text\b[^>]*>(.*?)</text>", svg, re.S)]


def test_a_forest_plot_is_inline_svg_with_its_labels_as_escaped_text():
    svg = interval_svg([IntervalRow(EVIL, 0.2, 0.1, 0.3, "called", 0.0, 0.05, 0.05, 0.06),
                        IntervalRow("age young→old", None, note="no pairs: every set dropped by the judge")],
                       reference=0.0)
    assert svg.startswith('<svg class="chart" role="img"') and "<?xml" not in svg and "<metadata>" not in svg
    assert "<script" not in svg and "&lt;script&gt;alert('x')&lt;/script&gt;&amp;" in svg
    shown = texts(svg)
    assert any("$x$ $y$" in t for t in shown), "dollar signs are not read as mathtext"
    assert any(t.startswith("undefined: no pairs: every set dropped") for t in shown), "an undefined row says why"
    assert "age young→old" in shown


def test_charts_are_byte_identical_run_to_run_and_ids_differ_between_charts():
    rows = [IntervalRow(f"row {i}", 0.1 * i, 0.1 * i - 0.05, 0.1 * i + 0.05) for i in range(5)]
    first, again = interval_svg(rows, salt="a"), interval_svg(rows, salt="a")
    assert first == again
    ids = set(re.findall(r'id="([^"]+)"', first))
    assert ids and not ids & set(re.findall(r'id="([^"]+)"', interval_svg(rows, salt="b"))), "two charts on a page share no id"


def test_long_labels_are_cut_and_a_share_axis_is_in_percent():
    svg = interval_svg([IntervalRow("x" * 100, 0.5, 0.4, 0.6)], share=True)
    assert "x" * 39 + "…" in texts(svg) and "x" * 41 not in svg
    assert any(t.endswith("%") for t in texts(svg))


def test_a_trend_chart_draws_every_run_and_its_breaks():
    points = [TrendPoint(f"2025-01-0{i}", 0.1 * i, 0.05 * i, 0.15 * i, "called" if i == 3 else "") for i in range(1, 5)]
    svg = trend_svg(points + [TrendPoint("2025-01-09", None)], breaks=[2])
    assert [t for t in texts(svg) if t.startswith("2025")] == [p.tick for p in points] + ["2025-01-09"]
    assert svg.count('stroke-dasharray') >= 1, "a dashed line where comparability changed"


def test_templates_escape_by_default_and_only_chart_svg_is_markup():
    assert environment().autoescape is True
    assert render_fragment("_notebook_counterfactual.html.j2", images=[("data:,", EVIL)], rows=[(EVIL, EVIL)]).count("<script") == 0
    templates = resources.files("counterfactual_lab.report") / "templates"
    for template in templates.iterdir():
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text, template.name
    marked = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "Markup(" in p.read_text()]
    assert marked == ["report/charts.py"], "the charts' SVG is the only markup the templates take unescaped"


def test_the_templates_ship_with_the_package():
    templates = resources.files("counterfactual_lab.report") / "templates"
    names = {p.name for p in templates.iterdir()}
    assert {"base.html.j2", "report.html.j2", "compare.html.j2", "history.html.j2", "report.css", "report.js"} <= names
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert '"counterfactual_lab.report" = ["templates/*"]' in pyproject, "package data: a non-editable install needs them"
