"""The report's full metrics table: every row of ``metrics.parquet`` with its verdict, as data for
the page's script to draw, sort, filter and page (``templates/report.js``).

The rows travel as one JSON array of arrays (column order in :attr:`MetricsTable.columns`)
inside ``<script type="application/json">``: 10⁴ rows are a few MB and open in a fraction of a
second, where a table of 10⁵ cells would not. The script writes every cell with
``textContent``, so a label cannot become markup whatever it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.metrics.schema import CONTROL_PREFIX, DEFAULT_MODALITY, ROW_KEY, missing

# What a row of metrics.parquet shows, in order; columns a table lacks are left out.
_METRIC_COLUMNS = ("metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high",
                   "n", "n_sources")
# The audit designs' columns (issue 18), after the query, where a table has them set.
_DESIGN_COLUMNS = ("modality", "phrasing", "measure")
# From the findings: the verdict and what the row is judged against (issue 15's columns when present).
_DECISION_COLUMNS = ("verdict", "control_value", "min_effect", "reason", "confounded_by", "robustness")
# What a ranking row was measured against, beside its numbers; then the note (why a value is undefined).
_TRAILING_COLUMNS = ("protocol", "k", "desired", "note")
_KEY = ROW_KEY
# Verdicts of the rows findings leave out.
CONTROL_ROW, REVIEW_ROW = "control", "people's review"
_FLOAT_DIGITS = 6


@dataclass(frozen=True)
class MetricsTable:
    """Column names, rows (lists of JSON values), how many are undefined, and the verdicts present."""

    columns: list[str]
    rows: list[list[Any]]
    undefined: int
    verdicts: list[str]


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return None if missing(value) else float(f"{value:.{_FLOAT_DIGITS}g}")
    return value


def metrics_table(metrics: pl.DataFrame, findings: pl.DataFrame) -> MetricsTable:
    """Every metrics row (controls and review rows too) with its verdict from ``findings``
    (:func:`~counterfactual_lab.report.findings.assess_findings`; "control" for a control row,
    "people's review" for a review row)."""
    if metrics is None or metrics.is_empty():
        return MetricsTable([], [], 0, [])
    key = [c for c in _KEY if c in metrics.columns]
    decisions = [c for c in _DECISION_COLUMNS if c in findings.columns and c not in metrics.columns]
    table = metrics.with_row_index("_order")
    if decisions and not findings.is_empty():
        joined = findings.select([*key, *decisions]).unique(subset=key, keep="first")
        table = table.join(joined, on=key, how="left", nulls_equal=True)
    table = table.sort("_order")
    if "verdict" in table.columns:
        stratum = pl.col("stratum") if "stratum" in table.columns else pl.lit(None, dtype=pl.String)
        table = table.with_columns(
            pl.when(pl.col("verdict").is_not_null()).then(pl.col("verdict"))
            .when(pl.col("metric").str.starts_with(CONTROL_PREFIX)).then(pl.lit(CONTROL_ROW))
            .when(stratum == "review").then(pl.lit(REVIEW_ROW))
            .otherwise(pl.col("verdict")).alias("verdict"))
    wanted = [*_METRIC_COLUMNS[:6], *_DESIGN_COLUMNS, *_METRIC_COLUMNS[6:], *_DECISION_COLUMNS, *_TRAILING_COLUMNS]
    columns = [c for c in wanted if c in table.columns and (c in _METRIC_COLUMNS or table[c].null_count() < table.height)
               and (c != "modality" or (table[c].fill_null(DEFAULT_MODALITY) != DEFAULT_MODALITY).any())]
    rows = [[_json_value(v) for v in row] for row in table.select(columns).iter_rows()]
    value = table["value"].cast(pl.Float64) if "value" in table.columns else None
    undefined = 0 if value is None else int((value.is_null() | value.is_nan()).sum())
    verdicts = sorted(set(table["verdict"].drop_nulls().to_list())) if "verdict" in table.columns else []
    return MetricsTable(columns, rows, undefined, verdicts)


def numeric_columns(table: MetricsTable) -> Sequence[str]:
    """The columns the script sorts as numbers."""
    return [c for c in table.columns if c in ("value", "ci_low", "ci_high", "n", "n_sources", "control_value",
                                              "min_effect", "k")]


def as_payload(table: MetricsTable) -> Mapping[str, Any]:
    """What the page's script reads (``|tojson`` in the template)."""
    return {"columns": table.columns, "numeric": list(numeric_columns(table)), "rows": table.rows}
