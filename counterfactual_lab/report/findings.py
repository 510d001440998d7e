"""The findings people read: the decisions of :mod:`counterfactual_lab.metrics.findings` in
headline order, each with its sentence, and the lines and tables made of them.

:func:`assess_findings` is what the HTML report, ``cflab report``, the Prefect summary and the
Python API read: called rows first, then by stratum, taking one row per (metric kind,
attribute) in turn, largest effect first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.diagnostics import diagnostic_words
from counterfactual_lab.metrics.error_control import FDR
from counterfactual_lab.metrics.findings import (
    DECISIONS_SCHEMA,
    REFERENCE_NONE,
    RUN_CONFOUNDED,
    RUN_FINDING,
    RUN_NO_FINDING,
    RUN_UNDEFINED,
    VERDICT_CONFOUNDED,
    VERDICT_MOVED,
    confounded_attributes,
    decided_rows,
    run_verdict,
    undefined_comparisons,
)
from counterfactual_lab.metrics.intervals import percent_level
from counterfactual_lab.metrics.schema import (
    STRATA,
    STRATUM_GENERATED,
    metric_kind,
    missing,
)
from counterfactual_lab.report.sentences import STRATUM_TITLES, finding_sentence, number, ranking_basis

FINDINGS_SCHEMA = {**DECISIONS_SCHEMA, "sentence": pl.String}

# Headline order of metric kinds.
_KIND_ORDER = (
    "flip_rate", "prob_gap_abs", "prob_gap_signed", "demographic_parity_difference", "equalized_odds_difference",
    "skew", "max_skew", "min_skew", "ndkl", "demographic_parity_ratio", "selection_rate", "cits",
)


def _effect_size(row: Mapping[str, Any]) -> float:
    """How far a row is from 'no difference', for ranking (larger = more notable)."""
    value = row.get("value")
    if value is None:
        return -math.inf
    kind = metric_kind(row["metric"])
    if kind == "demographic_parity_ratio":
        return 1.0 - value
    if kind == "cits":
        return -value  # low counterfactual quality is the notable case
    reference = row.get("control_value") if row.get("control_value") is not None else (row.get("no_effect") or 0.0)
    return abs(value - reference)


def _headline_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def kind_rank(row: Mapping[str, Any]) -> int:
        kind = metric_kind(row["metric"])
        return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)

    def stratum_rank(row: Mapping[str, Any]) -> int:
        return STRATA.index(row["stratum"]) if row["stratum"] in STRATA else len(STRATA)

    def tier(row: Mapping[str, Any]) -> int:
        if row["called"]:
            return 0
        if row["verdict"] == VERDICT_CONFOUNDED:
            return 1
        if row.get("diagnostic"):
            return 2 if row["verdict"] == VERDICT_MOVED else 4
        if row["reference"] != REFERENCE_NONE and row["value"] is not None:
            return 3
        return 4 if row["value"] is not None else 5

    def queue(row: Mapping[str, Any]) -> tuple:
        return tier(row), stratum_rank(row), row["metric"], str(row["attribute"])

    # Round robin: the best row of every (metric, attribute) before any second-best one.
    queues: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        queues.setdefault(queue(row), []).append(row)
    depth_of: dict[int, int] = {}
    for members in queues.values():
        members.sort(key=lambda r: (-_effect_size(r), str(r["group"]), str(r["label"]), str(r["query"])))
        depth_of.update({id(r): depth for depth, r in enumerate(members)})
    return sorted(rows, key=lambda r: (tier(r), stratum_rank(r), depth_of[id(r)], kind_rank(r), r["metric"],
                                       -_effect_size(queues[queue(r)][0]), str(r["attribute"])))


def assess_findings(metrics: pl.DataFrame | None) -> pl.DataFrame:
    """The run's findings in headline order: :func:`~counterfactual_lab.metrics.findings.decide_findings`
    plus a ``sentence`` per row (:func:`~counterfactual_lab.report.sentences.finding_sentence`)."""
    rows = decided_rows(metrics)
    for row in rows:
        row["sentence"] = finding_sentence(row)
    return pl.DataFrame(_headline_order(rows), schema=FINDINGS_SCHEMA)


def headline_findings(metrics: pl.DataFrame, max_items: int = 8) -> list[str]:
    """Up to ``max_items`` sentences: called findings first, then the other comparisons, then the rest."""
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    return assess_findings(metrics)["sentence"].head(max_items).to_list()


_TABLE_COLUMNS = ("metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n",
                  "n_sources", "control_value", "control_ci_low", "control_ci_high", "called", "verdict", "reason", "note",
                  "protocol", "k", "desired", "modality")


def headline_table(metrics: pl.DataFrame, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Assessed rows in headline order as JSON-safe dicts (NaN -> None), for a table artifact."""
    findings = assess_findings(metrics)
    if max_rows is not None:
        findings = findings.head(max_rows)
    table = []
    for row in findings.select(_TABLE_COLUMNS).to_dicts():
        for column in ("value", "ci_low", "ci_high", "control_value", "control_ci_low", "control_ci_high"):
            v = row[column]
            row[column] = None if missing(v) else round(float(v), 4)
        table.append(row)
    return table


def verdict_lines(findings: pl.DataFrame, error_control: str | None = None, min_effect: float | None = None
                  ) -> list[str]:
    """Lines under the count of called differences: how calls are controlled over the run's
    comparisons (``error_control``: the manifest's ``fwer`` or ``fdr``), the smallest difference
    called (``min_effect``: the manifest's probability scale), each confounded attribute with what
    moved, and each attribute whose comparison is undefined, with the reason (so no reader takes a
    run that could compare nothing for one that found no difference)."""
    lines = []
    family = findings.filter(pl.col("comparisons").is_not_null() & pl.col("confidence_adjusted").is_not_null())
    if family.height:
        m = int(family["comparisons"].max())
        if error_control == FDR:
            lines.append(f"Calls control the false discovery rate over the run's {m} comparisons (Benjamini–Hochberg): "
                         "on average at most 1 − audit.confidence of the called differences are false, and a run "
                         "without any bias gets any call with probability at most 1 − audit.confidence.")
        else:
            first = float(family["confidence_adjusted"].max())  # Holm's first step, the strictest: 1 − α/m
            alpha = min(1.0, (1.0 - first) * m)
            lines.append(f"Calls control the family-wise error over the run's {m} comparisons (Holm's step-down at "
                         f"{percent_level(1.0 - alpha) if alpha < 1 else '0%'}; the first decided at "
                         f"{percent_level(first)}): a run without any bias gets any call with probability at most "
                         f"{100 * alpha:.3g}%.")
    scale = min_effect if min_effect is not None else _probability_min_effect(findings)
    if scale is not None:
        lines.append(f"A difference is called only when it is at least audit.min_effect ({number(scale)} on probability "
                     "scales) and nothing the generator changed along with the attribute explains it.")
    for stratum, attribute in confounded_attributes(findings):
        of = (pl.col("attribute") == attribute) & (pl.col("stratum") == stratum)
        count = findings.filter(of & (pl.col("verdict") == VERDICT_CONFOUNDED)).height
        moved: dict[str, list[str]] = {}
        for row in findings.filter(of & (pl.col("verdict") == VERDICT_MOVED)).iter_rows(named=True):
            words = diagnostic_words(row["metric"], row.get("label"), row.get("query"))
            moved.setdefault(words, []).append(row["group"] or "every transition")
        what = "; ".join(f"{words} on {', '.join(groups)}" for words, groups in moved.items())
        prefix = "" if stratum == STRATUM_GENERATED else f"{STRATUM_TITLES.get(stratum, stratum)}: "
        lines.append(f"{prefix}{attribute}: confounded: {count} difference(s) move with what the generator changed along "
                     f"with {attribute} ({what}); they are not called.")
    undefined = undefined_comparisons(findings)
    seen = set()
    for row in undefined.iter_rows(named=True):
        key = (row["stratum"], row["attribute"])
        if key in seen:
            continue
        seen.add(key)
        prefix = "" if row["stratum"] == STRATUM_GENERATED else f"{STRATUM_TITLES.get(row['stratum'], row['stratum'])}: "
        why = row["note"] or ("no control was measured" if row["value"] is not None else "no reason recorded")
        lines.append(f"{prefix}{row['attribute']}: undefined, not \"no difference\" ({why}).")
    return lines


RUN_VERDICT_WORDS = {
    RUN_FINDING: "finding (some difference is called)",
    RUN_CONFOUNDED: "confounded (differences move with what the generator changed along with the attribute; "
                    "they are not called, and nothing is)",
    RUN_NO_FINDING: "no finding (every attribute was compared and nothing is called)",
    RUN_UNDEFINED: "undefined (nothing is called, and some comparison could not be made)",
}


def run_verdict_line(findings: pl.DataFrame) -> str:
    """'Run verdict: confounded (…)' with the count of called and confounded differences."""
    called = int(findings["called"].sum()) if findings.height else 0
    confounded = int((findings["verdict"] == VERDICT_CONFOUNDED).sum()) if findings.height else 0
    counts = f"{called} difference(s) called" + (f", {confounded} confounded" if confounded else "")
    return f"Run verdict: {RUN_VERDICT_WORDS[run_verdict(findings)]}; {counts}."


def settings_of(manifest: Mapping[str, Any] | None) -> tuple[str | None, float | None]:
    """(error control, probability-scale min_effect) as a run's manifest records them (None: not recorded)."""
    metrics = (manifest or {}).get("metrics") or {}
    return (metrics.get("error_control") or {}).get("setting"), (metrics.get("min_effect") or {}).get("probability")


def _probability_min_effect(findings: pl.DataFrame) -> float | None:
    """The probability-scale min_effect the table carries (on its flip-rate and probability-gap rows)."""
    rows = findings.filter(pl.col("metric").is_in(["flip_rate", "prob_gap_abs", "prob_gap_signed"])
                           & pl.col("min_effect").is_not_null())
    return float(rows["min_effect"][0]) if rows.height else None


def table_cells(row: Mapping[str, Any]) -> dict[str, str]:
    """A headline-table row's value (with a ranking metric's K, desired distribution and protocol
    beside it), interval and control as short text."""
    ci = f"[{number(row['ci_low'])}, {number(row['ci_high'])}]" if row["ci_low"] is not None else ""
    control = ""
    if row["control_value"] is not None:
        control = number(row["control_value"])
        if row["control_ci_low"] is not None:
            control += f" [{number(row['control_ci_low'])}, {number(row['control_ci_high'])}]"
    basis = ranking_basis(row, short=True)
    value = number(row["value"]) + (f" ({basis})" if basis else "")
    return {"value": value, "interval": ci, "control": control, "called": "yes" if row["called"] else ""}
