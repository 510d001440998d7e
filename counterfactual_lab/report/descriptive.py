"""What the report shows of the metrics that are reported, not called: group metrics and CITS by
stratum, and retrieval skew per query, each as an interval plot with its rows in words.

Plots and sentences are capped (:data:`MAX_ROWS` rows a plot, :data:`MAX_QUERIES` queries,
:data:`SENTENCES_PER_STRATUM`), so the report's size does not grow with the audit; every row is
in the metrics table. A skew or NDKL row says what it was measured against (its K, desired
distribution and protocol) beside its number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from markupsafe import Markup

from counterfactual_lab.metrics.findings import REFERENCE_NONE
from counterfactual_lab.metrics.schema import STRATA, STRATUM_GENERATED, metric_k, metric_kind, missing
from counterfactual_lab.report.charts import IntervalRow, interval_svg
from counterfactual_lab.report.designs import is_design_row
from counterfactual_lab.report.forests import is_forest_kind
from counterfactual_lab.report.sentences import STRATUM_TITLES, ranking_basis

MAX_ROWS = 24
MAX_QUERIES = 6
SENTENCES_PER_STRATUM = 8
SKEW_KINDS = ("skew", "max_skew", "min_skew", "ndkl")
_SKEW_NAMES = {"skew": "Skew", "max_skew": "MaxSkew", "min_skew": "MinSkew", "ndkl": "NDKL"}
# Interval plots of the group metrics, in this order: (kind, title, value is a share).
_GROUP_PLOTS = (
    ("demographic_parity_difference", "Demographic parity difference of predicted labels across groups", False),
    ("demographic_parity_ratio", "Demographic parity ratio (1 = parity)", False),
    ("equalized_odds_difference", "Equalized odds difference", False),
    ("selection_rate", "Selection rate: share of a group's images given the label", True),
    ("cits", "CITS (the project's own counterfactual image-text score)", False),
)


@dataclass(frozen=True)
class Plot:
    """One titled interval plot: how many rows there are, how many it shows, and the SVG."""

    title: str
    rows: int
    shown: int
    svg: Markup
    bases: list[str]  # what the ranking rows were measured against (skew plots)


@dataclass(frozen=True)
class Descriptive:
    """The reported-not-called section: sentences by stratum, group plots, skew plots per query."""

    sentences: list[tuple[str, list[str]]]  # (stratum title, sentences)
    hidden: int  # sentences left out (they are in the metrics table)
    group_plots: list[Plot]
    skew_plots: list[Plot]
    queries: int  # how many queries have skew rows


def _value(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    return None if missing(value) else float(value)


def _stratum_tag(row: Mapping[str, Any]) -> str:
    stratum = row.get("stratum") or ""
    return "" if stratum == STRATUM_GENERATED else f" [{stratum.replace('_', ' ')}]"


def _interval_row(row: Mapping[str, Any], label: str) -> IntervalRow:
    return IntervalRow(label, _value(row, "value"), _value(row, "ci_low"), _value(row, "ci_high"), note=row.get("note"))


def _stratum_rank(row: Mapping[str, Any]) -> int:
    return STRATA.index(row["stratum"]) if row.get("stratum") in STRATA else len(STRATA)


def _group_plots(rows: list[dict[str, Any]]) -> list[Plot]:
    plots = []
    for kind, title, share in _GROUP_PLOTS:
        chosen = sorted((r for r in rows if metric_kind(r["metric"]) == kind),
                        key=lambda r: (_stratum_rank(r), str(r["attribute"]), str(r["label"]), str(r["group"])))
        if not chosen:
            continue
        shown = chosen[:MAX_ROWS]
        labels = [" · ".join(str(r[c]) for c in ("attribute", "group", "label") if r.get(c)) + _stratum_tag(r) for r in shown]
        svg = interval_svg([_interval_row(r, label) for r, label in zip(shown, labels)], share=share, salt=f"group|{kind}")
        plots.append(Plot(title, len(chosen), len(shown), svg, []))
    return plots


def _skew_label(row: Mapping[str, Any]) -> str:
    k = metric_k(row["metric"])
    label = f"{row['attribute']} {_SKEW_NAMES[metric_kind(row['metric'])]}" + (f"@{k}" if k else "")
    return label + (f" ({row['group']})" if row.get("group") else "") + _stratum_tag(row)


def _skew_plot(title: str, rows: list[dict[str, Any]], salt: str) -> Plot:
    rows = sorted(rows, key=lambda r: (_stratum_rank(r), str(r["attribute"]), SKEW_KINDS.index(metric_kind(r["metric"])),
                                       r["metric"], str(r.get("group"))))
    shown = rows[:MAX_ROWS]
    bases = list(dict.fromkeys(f"{r['attribute']}{_stratum_tag(r)}: {ranking_basis(r)}" for r in shown if r.get("protocol")))
    svg = interval_svg([_interval_row(r, _skew_label(r)) for r in shown], reference=0.0, salt=salt)
    return Plot(title, len(rows), len(shown), svg, bases)


def _skew_plots(rows: list[dict[str, Any]]) -> tuple[list[Plot], int]:
    skew = [r for r in rows if metric_kind(r["metric"]) in SKEW_KINDS]
    queries = sorted({r["query"] for r in skew if r.get("query") is not None})
    plots = [_skew_plot(f"Query: {q}", [r for r in skew if r.get("query") == q], f"skew|{q}") for q in queries[:MAX_QUERIES]]
    averaged = [r for r in skew if r.get("query") is None and r.get("protocol")]
    if averaged:
        plots.append(_skew_plot("Averaged over the queries (each ranking its own sets)", averaged, "skew|averaged"))
    return plots, len(queries)


def descriptive(findings: pl.DataFrame) -> Descriptive:
    """The section's content from the assessed findings (rows whose reference is "none")."""
    if findings.is_empty():
        return Descriptive([], 0, [], [], 0)
    rows = findings.filter(pl.col("reference") == REFERENCE_NONE)
    if "diagnostic" in rows.columns:
        rows = rows.filter(~pl.col("diagnostic").fill_null(False))
    # One phrasing's rows, the phrasing spread and the synthetic shift have the designs section.
    dicts = [r for r in rows.to_dicts() if not is_design_row(r)]
    sentences, hidden = [], 0
    for stratum in [s for s in STRATA if s in {r["stratum"] for r in dicts}]:
        said = [r["sentence"] for r in dicts if r["stratum"] == stratum and not is_forest_kind(metric_kind(r["metric"]))]
        sentences.append((STRATUM_TITLES.get(stratum, stratum), said[:SENTENCES_PER_STRATUM]))
        hidden += max(0, len(said) - SENTENCES_PER_STRATUM)
    skew_plots, queries = _skew_plots(dicts)
    return Descriptive([s for s in sentences if s[1]], hidden, _group_plots(dicts), skew_plots, queries)
