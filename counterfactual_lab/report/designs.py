"""The audit designs of issue 18 in words: phrasing robustness, "unclear" answers, how much answers
change, and the synthetic shift, as lines the HTML report (:func:`designs_section`, drawn by
``templates/_designs.html.j2``, which escapes every line) and ``cflab report`` (:func:`design_lines`)
both print.

* **Phrasing robustness**: how many called differences hold in every phrasing (``robust``) and how
  many do not (``phrasing-dependent``), and the largest ``phrasing_spread`` rows;
* **"Unclear" answers**: per prompt, the share of the answers that went to the unclear option, by
  group, and that the other gaps are on the answers given;
* **How much answers change**: per prompt and measure, ``answer_change`` beside its control;
* **Synthetic shift**: how far generated images alone (original → reconstruction) move the model,
  apart from the findings, which compare generated with generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.answer_change import EMBEDDING_COSINE
from counterfactual_lab.metrics.counterfactual_fairness import ANSWER_CHANGE
from counterfactual_lab.metrics.generative import UNCLEAR_RATE as UNCLEAR_FAMILY
from counterfactual_lab.metrics.generative import gap_value_words
from counterfactual_lab.metrics.phrasings import PHRASING_DEPENDENT, PHRASING_SPREAD, ROBUST
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, STRATUM_OBSERVATIONAL
from counterfactual_lab.metrics.synthetic_shift import SYNTHETIC_SHIFT
from counterfactual_lab.report.sentences import interval, number, percent

UNCLEAR_RATE = UNCLEAR_FAMILY.group_metric
_MEASURE_WORDS = {"rouge_l": "1 − ROUGE-L", EMBEDDING_COSINE: "1 − embedding cosine"}
SECTION_TITLES = {
    "phrasing": "Phrasing robustness",
    "unclear": "\"Unclear\" answers",
    "answer_change": "How much answers change",
    "synthetic_shift": "Synthetic shift: generated images alone",
}


def change_measure_words(measure: str | None) -> str:
    """An ``answer_change`` row's ``measure`` in words ("1 − ROUGE-L")."""
    return _MEASURE_WORDS.get(measure, str(measure))


def _rows(metrics: pl.DataFrame, metric: str) -> list[dict[str, Any]]:
    if metrics is None or metrics.is_empty() or "metric" not in metrics.columns:
        return []
    return metrics.filter(pl.col("metric") == metric).to_dicts()


def measure_words(metric: str | None, label: str | None = None, query: str | None = None) -> str:
    """What a synthetic-shift or spread row's ``measure`` is, in words ("P('doctor')", "the flip rate")."""
    if not metric:
        return "the value"
    base = metric.split(":", 1)[0]
    if base == "flip_rate":
        return "the top-1 label's flip rate"
    if base == ANSWER_CHANGE:
        return f"the answers to '{query}' ({_MEASURE_WORDS.get(metric.partition(':')[2], metric)})"
    words = gap_value_words(base)
    kind = "mean |Δ| of " if base.endswith("_gap_abs") else ""
    if words is None:
        return f"{kind}P('{label}')" if label else base
    return f"{kind}{words}" + (f" for '{query}'" if query else "")


def phrasing_lines(findings: pl.DataFrame, metrics: pl.DataFrame, top: int = 3) -> list[str]:
    """How many called differences are robust to the phrasing, and the largest spreads."""
    spreads = [r for r in _rows(metrics, PHRASING_SPREAD) if r["value"] is not None]
    if not spreads:
        return []
    called = findings.filter(pl.col("called") & pl.col("robustness").is_not_null()) if findings.height else findings
    robust = called.filter(pl.col("robustness") == ROBUST).height if called.height else 0
    dependent = called.filter(pl.col("robustness") == PHRASING_DEPENDENT).height if called.height else 0
    lines = [f"{robust} called difference(s) have the same sign in every phrasing (robust), {dependent} do not "
             "(phrasing-dependent); the calls are on the rows pooled over the phrasings."]
    for row in sorted(spreads, key=lambda r: -r["value"])[:top]:
        where = f"{row['attribute']} {row['group']}" if row.get("group") else f"changing {row['attribute']}"
        lines.append(f"{where}: {measure_words(row.get('measure'), row.get('label'), row.get('query'))} "
                     f"({row.get('measure')}) differs by {number(row['value'])} between phrasings ({row.get('note')})")
    return lines


def unclear_lines(metrics: pl.DataFrame) -> list[str]:
    """Per prompt, the share of the answers that went to "unclear", by group (the comparison stratum)."""
    rows = [r for r in _rows(metrics, UNCLEAR_RATE) if r.get("group") and r["stratum"] != STRATUM_OBSERVATIONAL
            and r.get("phrasing") is None]
    lines = []
    for query in dict.fromkeys(r["query"] for r in rows):
        of = [r for r in rows if r["query"] == query]
        groups = ", ".join(f"{r['attribute']} {r['group']} {percent(r['value'])}{interval(r, percent)} (n={r['n']})"
                           for r in of if r["value"] is not None)
        lines.append(f"'{query}': the share of answers that went to 'unclear': {groups}. Its other gaps (P(yes), the "
                     "label scores) are computed on the answers given; unclear_rate_gap_* compare the unclear shares.")
    return lines


def answer_change_lines(findings: pl.DataFrame) -> list[str]:
    """Per prompt and measure, the overall answer change beside its control, with its verdict."""
    if findings.is_empty():
        return []
    rows = findings.filter((pl.col("metric") == ANSWER_CHANGE) & pl.col("group").is_null() & pl.col("phrasing").is_null())
    lines = []
    for row in rows.to_dicts():
        control = (f"; control (another seed) {number(row['control_value'])}{interval(row, number, 'control_')}"
                   if row.get("control_value") is not None else "; no control")
        verdict = "called" if row["called"] else row["verdict"] + (f" ({row['reason']})" if row.get("reason") else "")
        value = number(row["value"]) + interval(row) if row["value"] is not None else f"undefined ({row.get('note')})"
        lines.append(f"'{row['query']}', {row['attribute']} ({change_measure_words(row.get('measure'))}): "
                     f"{value}{control} — {verdict}")
    return lines


def synthetic_lines(metrics: pl.DataFrame, top: int = 6) -> list[str]:
    """How far generated images alone move the model: the overall synthetic-shift rows, largest first."""
    rows = [r for r in _rows(metrics, SYNTHETIC_SHIFT) if r.get("group") is None and r["value"] is not None]
    if not rows:
        return []
    lines = ["Original photo → its reconstruction (same source, same value, the caption unchanged): what generating "
             "the image alone does. The findings compare generated with generated, so this shift is not in them."]
    for row in sorted(rows, key=lambda r: -abs(r["value"]))[:top]:
        lines.append(f"{row['attribute']}: {measure_words(row.get('measure'), row.get('label'), row.get('query'))} "
                     f"({row.get('measure')}) moves by {number(row['value'])}{interval(row)} "
                     f"(n={row['n']} pairs from {row['n_sources']} source images)")
    return lines


def design_lines(findings: pl.DataFrame, metrics: pl.DataFrame) -> dict[str, list[str]]:
    """Section key → its lines (:data:`SECTION_TITLES`); sections without rows left out."""
    sections = {
        "phrasing": phrasing_lines(findings, metrics),
        "unclear": unclear_lines(metrics),
        "answer_change": answer_change_lines(findings),
        "synthetic_shift": synthetic_lines(metrics),
    }
    return {key: lines for key, lines in sections.items() if lines}


def designs_section(findings: pl.DataFrame, metrics: pl.DataFrame) -> list[tuple[str, str, list[str]]]:
    """What the report's designs section shows: (key, title, lines) per section of :func:`design_lines`
    (empty without any of these rows). Plain text: the template escapes it."""
    return [(key, SECTION_TITLES[key], lines) for key, lines in design_lines(findings, metrics).items()]


def is_design_row(row: Mapping[str, Any]) -> bool:
    """Rows this section shows instead of the findings' list of reported rows: one phrasing's row, the
    spread and the synthetic shift (controls included)."""
    metric = str(row.get("metric")).removeprefix(CONTROL_PREFIX)
    return row.get("phrasing") is not None or metric in (PHRASING_SPREAD, SYNTHETIC_SHIFT)
