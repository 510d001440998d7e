"""The report's first screen in words: the run's verdict in one sentence, a strip of facts, and one
line per called or confounded finding, each beside its control and ``min_effect``.

Everything here reads the one decision of :mod:`counterfactual_lab.metrics.findings` (the
``verdict`` and ``called`` of each assessed row, the run's :func:`bias_verdict`); nothing is
decided again. Columns that only some tables carry (``min_effect``, ``confounded_by``,
``diagnostic``) are read where present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from counterfactual_lab.metrics.counterfactual_fairness import ANSWER_CHANGE
from counterfactual_lab.metrics.findings import REFERENCE_CONTROL, REFERENCE_NONE, bias_verdict, undefined_comparisons
from counterfactual_lab.metrics.intervals import percent_level
from counterfactual_lab.metrics.schema import STRATUM_REAL_VS_GENERATED, metric_kind, missing
from counterfactual_lab.report.designs import change_measure_words
from counterfactual_lab.report.forests import decision_interval, min_effect_of
from counterfactual_lab.report.sentences import REAL_VS_GENERATED_WARNING, STRATUM_TITLES, number, percent

FIRST_SCREEN_LINES = 5
CONFOUNDED = "confounded"
# The run verdicts bias_verdict returns, in the words of the first screen's badge.
VERDICT_BADGES = {"finding": "Finding", "confounded": "Confounded", "no finding": "No finding", "undefined": "Undefined"}


@dataclass(frozen=True)
class FindingLine:
    """One called or confounded finding on one line (``sentence``: the whole of it, as a tooltip)."""

    verdict: str
    subject: str
    measure: str
    estimate: str
    beside: str
    min_effect: str
    why: str
    sentence: str


@dataclass(frozen=True)
class Summary:
    """The first screen's words (module doc)."""

    verdict: str  # "finding", "confounded", "no finding" or "undefined"
    badge: str
    sentence: str
    facts: list[tuple[str, str]]
    lines: list[FindingLine]
    more: int  # called or confounded findings beyond the lines shown
    closest: str | None  # with nothing called or confounded: the comparison nearest to a call
    warnings: list[str] = field(default_factory=list)


def _listed(names: Sequence[str]) -> str:
    names = [str(n) for n in names]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _is_diagnostic(findings: pl.DataFrame) -> pl.Expr:
    return pl.col("diagnostic").fill_null(False) if "diagnostic" in findings.columns else pl.lit(False)


def _fmt(row: Mapping[str, Any]):
    return percent if metric_kind(str(row["metric"])) == "flip_rate" else number


def _interval(low: float | None, high: float | None, fmt) -> str:
    return "" if low is None or high is None else f" [{fmt(low)}, {fmt(high)}]"


def _measure(row: Mapping[str, Any]) -> str:
    """What a called row measures, and whether it holds in every phrasing where the probe has several."""
    robustness = f" ({row['robustness']})" if row.get("robustness") else ""
    return _what(row) + robustness


def _what(row: Mapping[str, Any]) -> str:
    kind = metric_kind(str(row["metric"]))
    if kind == "flip_rate":
        return "flip rate"
    if kind == ANSWER_CHANGE:
        return f"answer change ({change_measure_words(row.get('measure'))})" + (
            f" for '{row['query']}'" if row.get("query") else "")
    what = "signed Δ" if kind.endswith("_gap_signed") else "mean |Δ|"
    if kind.startswith("prob_gap"):
        return f"P('{row['label']}') {what}" if row.get("label") else f"P {what}"
    return f"{kind.removesuffix('_gap_signed').removesuffix('_gap_abs')} {what}" + (
        f" for '{row['query']}'" if row.get("query") else "")


def finding_line(row: Mapping[str, Any], manifest_metrics: Mapping[str, Any] | None) -> FindingLine:
    """A called or confounded row as one line: transition, measure, estimate with the interval its call
    rests on, its control (or the no-change value) and ``min_effect``."""
    fmt = _fmt(row)
    low, high = decision_interval(row)
    value = None if missing(row.get("value")) else row["value"]
    estimate = fmt(value) + _interval(low, high, fmt)
    if row.get("reference") == REFERENCE_CONTROL:
        band = row.get("control_band")
        if not missing(band):
            beside = f"control ±{number(band)}"
        elif missing(row.get("control_value")):
            beside = "control not measured"
        else:
            beside = f"control {fmt(row['control_value'])}" + _interval(*decision_interval(row, "control_"), fmt)
    else:
        beside = f"no control; no change = {fmt(row.get('no_effect'))}"
    threshold = min_effect_of(row, manifest_metrics)
    subject = f"{row['attribute']} {row['group']}" if row.get("group") else f"{row['attribute']}, all transitions"
    if row.get("stratum") and row["stratum"] in STRATUM_TITLES and row["stratum"] != "generated":
        subject += f" ({STRATUM_TITLES[row['stratum']]})"
    return FindingLine(
        verdict="called" if row.get("called") else CONFOUNDED, subject=subject, measure=_measure(row), estimate=estimate,
        beside=beside, min_effect="" if threshold is None else f"min_effect {number(threshold)}",
        why=str(row.get("confounded_by") or ""), sentence=str(row.get("sentence") or ""))


def _level(findings: pl.DataFrame, manifest_metrics: Mapping[str, Any]) -> str:
    confidence = manifest_metrics.get("confidence")
    return percent_level(float(confidence)) if isinstance(confidence, int | float) else "95%"


def _comparisons(compared: pl.DataFrame) -> int:
    if "comparisons" in compared.columns and compared["comparisons"].drop_nulls().len():
        return int(compared["comparisons"].max())
    return compared.height


def verdict_sentence(verdict: str, findings: pl.DataFrame, manifest_metrics: Mapping[str, Any]) -> str:
    """The run's answer in one sentence: the verdict, for which attributes, over how many comparisons."""
    diagnostic = _is_diagnostic(findings)
    compared = findings.filter((pl.col("reference") != REFERENCE_NONE) & ~diagnostic)
    m, level = _comparisons(compared), _level(findings, manifest_metrics)
    attributes = list(dict.fromkeys(compared["attribute"].drop_nulls().to_list()))
    if verdict == "finding":
        called = findings.filter(pl.col("called"))
        where = list(dict.fromkeys(called["attribute"].to_list()))
        measures = list(dict.fromkeys(_measure(r).split(" for ")[0] for r in called.head(40).to_dicts()))[:3]
        return (f"Finding: {called.height} difference{'s' if called.height != 1 else ''} called for {_listed(where)} "
                f"({', '.join(measures)}) out of {m} comparisons, family-wise at {level}.")
    if verdict == CONFOUNDED:
        rows = findings.filter(pl.col("verdict") == CONFOUNDED)
        where = list(dict.fromkeys(rows["attribute"].to_list()))
        return (f"Confounded: {rows.height} difference{'s' if rows.height != 1 else ''} for {_listed(where)} "
                "move with what the generator changed along with the attribute, so none is called.")
    if verdict == "no finding":
        return f"No finding: nothing called for {_listed(attributes)} in {m} comparisons (family-wise at {level})."
    undefined = undefined_comparisons(findings)
    if "diagnostic" in undefined.columns:
        undefined = undefined.filter(~pl.col("diagnostic").fill_null(False))
    if undefined.is_empty():
        return "Undefined: this run has nothing to compare (no counterfactual pairs), so it can call nothing."
    first = undefined.row(0, named=True)
    which = list(dict.fromkeys(undefined["attribute"].to_list()))
    why = first.get("note") or ("no control was measured" if first.get("value") is not None else "no reason recorded")
    return (f"Undefined: nothing called, and {_listed(which)} could not be compared "
            f"({why}{'; and more in the sections below' if len(which) > 1 else ''}).")


def _facts(manifest: Mapping[str, Any], findings: pl.DataFrame) -> list[tuple[str, str]]:
    facts = []
    accounting = manifest.get("row_accounting") or {}
    planned, kept = accounting.get("planned"), accounting.get("kept")
    if isinstance(planned, int) and planned > 0 and isinstance(kept, int):
        facts.append(("judge kept", f"{kept} of {planned} counterfactuals ({percent(kept / planned)})"))
    if isinstance(accounting.get("valid"), int):
        facts.append(("sources", f"{accounting['valid']} images"))
    compared = findings.filter((pl.col("reference") != REFERENCE_NONE) & ~_is_diagnostic(findings)) if findings.height else findings
    if findings.height:
        facts.append(("comparisons", str(_comparisons(compared))))
    labels = (manifest.get("metrics") or {}).get("labels")
    if isinstance(labels, list) and labels:
        facts.append(("labels", str(len(labels))))
    return facts


def summarise(manifest: Mapping[str, Any], metrics: pl.DataFrame, findings: pl.DataFrame) -> Summary:
    """The first screen's words for a run (module doc)."""
    manifest_metrics = manifest.get("metrics") or {}
    if findings.is_empty():
        return Summary("undefined", VERDICT_BADGES["undefined"], "Undefined: no metrics were computed in this run.",
                       _facts(manifest, findings), [], 0, None)
    verdict = bias_verdict(metrics)
    notable = findings.filter(pl.col("called") | (pl.col("verdict") == CONFOUNDED))
    lines = [finding_line(r, manifest_metrics) for r in notable.head(FIRST_SCREEN_LINES).to_dicts()]
    closest = None
    if notable.is_empty():
        compared = findings.filter((pl.col("reference") != REFERENCE_NONE) & pl.col("value").is_not_null()
                                   & ~_is_diagnostic(findings))
        if compared.height:
            closest = str(compared["sentence"][0])
    warnings = [REAL_VS_GENERATED_WARNING] if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any() else []
    return Summary(verdict, VERDICT_BADGES.get(verdict, verdict.capitalize()),
                   verdict_sentence(verdict, findings, manifest_metrics), _facts(manifest, findings), lines,
                   max(0, notable.height - len(lines)), closest, warnings)
