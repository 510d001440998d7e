"""The report's forest plots: one per family of comparisons, each row beside what it is judged against.

A **family** is one counterfactual measure: the flip rate, the mean |Δ| and the mean signed Δ of
the label probabilities, and for a generative model under audit each probe gap per prompt
(``yes_prob_gap_signed`` for 'Is this person a doctor?', …). Its rows are the assessed findings
(:func:`counterfactual_lab.report.findings.assess_findings`) of that measure, one per transition
(and label), in headline order: called and confounded first, then the largest effects, round
robin over attributes. Each row shows

* the estimate and the interval its call is decided on (the family-wise one where the row has
  it, else the configured one);
* behind it, **its own control's** interval (controls are per stratum, attribute, label and
  prompt, so one band per plot would be wrong; for a signed gap the ±band the call must clear);
* behind that, the **min_effect zone**: differences smaller than ``min_effect`` (the row's own
  ``min_effect`` column where the table has one, else the manifest's ``metrics.min_effect`` on
  probability scales): around no change for a signed gap, above the control for a flip rate or
  a mean |Δ|.

Each modality of ``audit.modalities`` is a family of its own (the ``text`` and ``both`` rows of a
measure are plotted apart from its ``image`` rows, titled with what changed, and after them at equal
standing): a plot never mixes pairs whose two sides differ in different things.

Plots are capped (:data:`FIRST_SCREEN_ROWS` rows on the first screen, :data:`MAX_ROWS` below it,
at most :data:`MAX_FAMILIES` families), so the report's size does not grow with the audit: every
row is in the metrics table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from markupsafe import Markup

from counterfactual_lab.metrics.counterfactual_fairness import GAP_ABS_SUFFIX, GAP_SIGNED_SUFFIX, PAIR_METRICS
from counterfactual_lab.metrics.findings import REFERENCE_CONTROL
from counterfactual_lab.metrics.generative import gap_value_words, is_probe_metric
from counterfactual_lab.metrics.schema import (
    DEFAULT_MODALITY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    metric_kind,
    missing,
)
from counterfactual_lab.report.charts import CALLED, CONFOUNDED, IntervalRow, interval_svg
from counterfactual_lab.report.sentences import MODALITY_WORDS

FIRST_SCREEN_FAMILIES = 3
FIRST_SCREEN_ROWS = 10
MAX_ROWS = 30
MAX_FAMILIES = 12
# min_effect on probability scales applies to these when a table predates the per-row column.
_PROBABILITY_KINDS = set(PAIR_METRICS)

_TITLES = {
    "flip_rate": "Flip rate: share of pairs whose top-1 label changes",
    "prob_gap_abs": "Mean |Δ| of a label's probability",
    "prob_gap_signed": "Mean signed Δ of a label's probability",
}


@dataclass(frozen=True)
class Forest:
    """One family's forest plot: its name and title, how many rows it has and shows, and the SVG."""

    family: str  # the metric kind, e.g. "prob_gap_signed"
    query: str | None  # a probe gap's prompt
    title: str
    rows: int
    shown: int
    called: int
    svg: Markup
    modality: str = DEFAULT_MODALITY  # what a pair's two sides differ in (metrics/modalities.py)

    @property
    def filter(self) -> str:
        """What the metrics table is filtered by to show every row of the family."""
        return self.family


def is_forest_kind(kind: str) -> bool:
    """Whether rows of this metric kind are counterfactual comparisons drawn in a forest plot."""
    return kind in PAIR_METRICS or (is_probe_metric(kind) and kind.endswith((GAP_ABS_SUFFIX, GAP_SIGNED_SUFFIX)))


def _signed(kind: str) -> bool:
    return kind.endswith(GAP_SIGNED_SUFFIX)


def _number(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    return None if missing(value) else float(value)


def decision_interval(row: Mapping[str, Any], prefix: str = "") -> tuple[float | None, float | None]:
    """The interval a row's call is decided on, as the report draws it: the family-wise one where the
    row carries it, else the configured one."""
    adjusted = (_number(row, f"{prefix}ci_low_adjusted"), _number(row, f"{prefix}ci_high_adjusted"))
    if row.get("comparisons") is not None and None not in adjusted:
        return adjusted
    return _number(row, f"{prefix}ci_low"), _number(row, f"{prefix}ci_high")


def min_effect_of(row: Mapping[str, Any], manifest_metrics: Mapping[str, Any] | None) -> float | None:
    """The row's ``min_effect`` (its column), else the manifest's on probability scales; None when neither says."""
    own = _number(row, "min_effect")
    if own is not None:
        return own
    if metric_kind(str(row.get("metric"))) not in _PROBABILITY_KINDS:
        return None
    setting = (manifest_metrics or {}).get("min_effect")
    if isinstance(setting, Mapping):
        setting = setting.get("probability")
    return None if missing(setting) or isinstance(setting, bool) else float(setting)


def row_label(row: Mapping[str, Any]) -> str:
    """'gender male→female · doctor' ('gender, all transitions' for an attribute-wide row), and the
    stratum when it is not generated vs generated."""
    text = f"{row.get('attribute')} {row['group']}" if row.get("group") else f"{row.get('attribute')}, all transitions"
    if row.get("label"):
        text += f" · {row['label']}"
    stratum = row.get("stratum")
    if stratum and stratum != STRATUM_GENERATED:
        text += f" [{stratum.replace('_', ' ')}]"
    return text


def forest_row(row: Mapping[str, Any], manifest_metrics: Mapping[str, Any] | None) -> IntervalRow:
    """One assessed finding as a forest-plot row (module doc)."""
    kind = metric_kind(str(row["metric"]))
    low, high = decision_interval(row)
    control_low = control_high = None
    if row.get("reference") == REFERENCE_CONTROL:
        band = _number(row, "control_band")
        control_low, control_high = (-band, band) if band is not None else decision_interval(row, "control_")
    zone_low = zone_high = None
    threshold = min_effect_of(row, manifest_metrics)
    if threshold is not None:
        if _signed(kind):
            centre = _number(row, "no_effect") or 0.0
            zone_low, zone_high = centre - threshold, centre + threshold
        else:
            base = _number(row, "control_value")
            base = base if base is not None else (_number(row, "no_effect") or 0.0)
            zone_low, zone_high = base, base + threshold
    verdict = row.get("verdict")
    emphasis = CALLED if row.get("called") else CONFOUNDED if verdict == CONFOUNDED else ""
    return IntervalRow(row_label(row), _number(row, "value"), low, high, emphasis, control_low, control_high,
                       zone_low, zone_high, row.get("note"))


def family_title(kind: str, query: str | None, modality: str = DEFAULT_MODALITY) -> str:
    """The plot's title; a modality other than the image says what changed ("… [text: the same image, …]")."""
    if kind in _TITLES:
        title = _TITLES[kind]
    else:
        words = gap_value_words(kind) or kind
        what = "mean signed Δ" if _signed(kind) else "mean |Δ|"
        title = f"{words}: {what}" + (f" for '{query}'" if query else "")
    return title if modality == DEFAULT_MODALITY else f"{title} [{modality}: {MODALITY_WORDS.get(modality, modality)}]"


# A family: (metric kind, a probe gap's prompt, modality, its rows in headline order).
Family = tuple[str, str | None, str, list[dict[str, Any]]]
_MODALITY_ORDER = {modality: i for i, modality in enumerate(MODALITY_WORDS)}


def _families(findings: pl.DataFrame) -> list[Family]:
    """Every family (one per kind, prompt and modality, module doc), those with called or confounded rows
    first; among equals the image's before the text's and both's."""
    if findings.is_empty():
        return []
    kinds = {m: metric_kind(m) for m in findings["metric"].unique().to_list()}
    chosen = [m for m, kind in kinds.items() if is_forest_kind(kind)]
    rows = findings.filter(pl.col("metric").is_in(chosen) & (pl.col("stratum") != STRATUM_OBSERVATIONAL))
    if "diagnostic" in rows.columns:  # confound diagnostics (issue 15) have a section of their own
        rows = rows.filter(~pl.col("diagnostic").fill_null(False))
    if "phrasing" in rows.columns:  # one phrasing's rows: the pooled row is the comparison (designs section)
        rows = rows.filter(pl.col("phrasing").is_null())
    grouped: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
    for row in rows.to_dicts():
        kind = kinds[row["metric"]]
        modality = row.get("modality") or DEFAULT_MODALITY
        grouped.setdefault((kind, row["query"] if is_probe_metric(kind) else None, modality), []).append(row)

    def order(item: tuple[tuple[str, str | None, str], list[dict[str, Any]]]) -> tuple:
        (kind, query, modality), members = item
        notable = any(r["called"] or r.get("verdict") == CONFOUNDED for r in members)
        rank = list(PAIR_METRICS).index(kind) if kind in PAIR_METRICS else len(PAIR_METRICS)
        return (not notable, rank, str(query), kind, _MODALITY_ORDER.get(modality, len(_MODALITY_ORDER)))

    return [(kind, query, modality, members) for (kind, query, modality), members in sorted(grouped.items(), key=order)]


def forests(findings: pl.DataFrame, manifest_metrics: Mapping[str, Any] | None, max_rows: int,
            families: Sequence[Family] | None = None) -> list[Forest]:
    """Forest plots of every family (at most :data:`MAX_FAMILIES`), ``max_rows`` rows each."""
    out = []
    for kind, query, modality, members in (families if families is not None else _families(findings))[:MAX_FAMILIES]:
        shown = members[:max_rows]
        svg = interval_svg([forest_row(r, manifest_metrics) for r in shown], reference=0.0 if _signed(kind) else None,
                           share=kind == "flip_rate", salt=f"{kind}|{query}|{modality}|{max_rows}")
        called = sum(1 for r in members if r["called"])
        out.append(Forest(kind, query, family_title(kind, query, modality), len(members), len(shown), called, svg,
                          modality))
    return out


@dataclass(frozen=True)
class ReportForests:
    """The first screen's forest plots, the longer or further ones below it, and how many families there are."""

    first: list[Forest]
    more: list[Forest]
    families: int


def report_forests(findings: pl.DataFrame, manifest_metrics: Mapping[str, Any] | None) -> ReportForests:
    """The first :data:`FIRST_SCREEN_FAMILIES` families at :data:`FIRST_SCREEN_ROWS` rows for the
    first screen; below it, at up to :data:`MAX_ROWS` rows, the families it cut short and the
    families it had no room for (at most :data:`MAX_FAMILIES` in all)."""
    every = _families(findings)
    families = every[:MAX_FAMILIES]
    first = forests(findings, manifest_metrics, FIRST_SCREEN_ROWS, families[:FIRST_SCREEN_FAMILIES])
    rest = [family for index, family in enumerate(families)
            if index >= FIRST_SCREEN_FAMILIES or len(family[3]) > FIRST_SCREEN_ROWS]
    return ReportForests(first, forests(findings, manifest_metrics, MAX_ROWS, rest), len(every))

