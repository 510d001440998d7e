"""Findings: which differences in the metrics table are called, each beside its control, in plain words.

:func:`assess_findings` turns ``metrics.parquet`` into one row per metric row (control rows
sit beside the row they control, not on their own):

* **Counterfactual pair metrics** (``flip_rate``, ``prob_gap_abs``, ``prob_gap_signed``) are the
  comparisons the audit can call. In the ``generated`` stratum each is compared with its
  control of the same attribute (and label): ``control_flip_rate`` etc., the change when nothing
  protected changes (same source, same value, another seed). A difference is **called** only
  when the metric's interval excludes the control's — the intervals do not overlap; for the
  flip rate and the absolute gap only *above* the control counts (a change smaller than the
  generator's own variation is not bias), for the signed gap either side, and the signed gap's
  interval must also exclude 0 (its pairs share a seed, so 0 is no change, while the control,
  made at another seed, can carry a shift of its own). Otherwise the sentence
  (:mod:`counterfactual_lab.finding_sentences`) says "no difference detected at this sample
  size" with n. Where the run has no
  control (``real_vs_generated``: reconstruction off; ``evaluate_only``), the flip rate and the
  signed gap are compared with the no-effect value (0) and the sentence says there was no
  control; the absolute gap, positive whenever anything varies, is then reported, not called.
* **Group and retrieval metrics** (selection rate, parity, equalized odds, skew, NDKL) and CITS
  are reported with their intervals but never called: no control measures how much of them
  the generator's own variation produces, and spreads such as max − min or NDKL are ≥ 0 by
  construction, so "excludes 0" is no evidence.
* The ``observational`` stratum (originals only) is descriptive and never called.

"Any bias finding" of a run = any row with ``called``. :func:`headline_findings`,
:func:`headline_table` and :func:`summary_markdown` (the Prefect summary), ``cflab report``
and the HTML report all read this one assessment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.finding_sentences import (  # noqa: F401  (re-exported for the report and cflab report)
    REAL_VS_GENERATED_WARNING,
    REFERENCE_CONTROL,
    REFERENCE_NO_EFFECT,
    REFERENCE_NONE,
    STRATUM_TITLES,
    finding_sentence,
    interval,
    metric_k,
    metric_kind,
    missing,
    number,
    percent,
    points,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    STRATA,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
)

METRIC_COLUMNS = ("metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n",
                  "n_sources", "skipped_resamples", "note")

FINDINGS_SCHEMA = {
    "metric": pl.String, "stratum": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String,
    "query": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_sources": pl.Int64, "note": pl.String,
    "reference": pl.String,  # "control", "no effect" or "none" (descriptive: never called)
    "control_metric": pl.String, "control_value": pl.Float64, "control_ci_low": pl.Float64,
    "control_ci_high": pl.Float64, "control_n": pl.Int64, "no_effect": pl.Float64,
    "called": pl.Boolean, "sentence": pl.String,
}

# Pair metrics the audit calls: which side of the reference counts as a difference.
_CALLED_METRICS = {"flip_rate": "above", "prob_gap_abs": "above", "prob_gap_signed": "either"}
# Without a control, a metric is compared with the value that means no change, when an interval
# can reach it under no effect. The mean |Δ| cannot: it is positive whenever anything varies
# (the generator's own noise), so without a control it is reported, not called.
_NO_EFFECT = {"flip_rate": 0.0, "prob_gap_signed": 0.0}

# Headline order of metric kinds.
_KIND_ORDER = (
    "flip_rate", "prob_gap_abs", "prob_gap_signed", "demographic_parity_difference", "equalized_odds_difference",
    "skew", "max_skew", "min_skew", "ndkl", "demographic_parity_ratio", "selection_rate", "cits",
)


# -- the assessment -------------------------------------------------------------------------------


def _rows(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    absent = [c for c in ("metric", "attribute", "value") if c not in metrics.columns]
    if absent:
        raise ValueError(f"metrics table lacks columns {absent}; has {metrics.columns}")
    rows = metrics.to_dicts()
    for row in rows:
        for column in METRIC_COLUMNS:
            row.setdefault(column, None)
        # Tables written before strata existed compared originals with counterfactuals.
        if row["stratum"] is None:
            row["stratum"] = STRATUM_REAL_VS_GENERATED
        if missing(row["value"]):
            row["value"] = None
    return rows


def _control_key(row: Mapping[str, Any]) -> tuple:
    return (row["stratum"], row["attribute"], row["label"])


def _excludes(row: Mapping[str, Any], low: float | None, high: float | None, side: str) -> bool:
    """Whether the row's interval lies above [low, high] (or, for ``either``, above or below it)."""
    if row["value"] is None or missing(row["ci_low"]) or missing(row["ci_high"]) or low is None or high is None:
        return False
    above = row["ci_low"] > high
    below = row["ci_high"] < low
    return above or (side == "either" and below)


def _assess(row: dict[str, Any], controls: Mapping[tuple, dict[str, Any]]) -> dict[str, Any]:
    kind = metric_kind(row["metric"])
    out = {c: row.get(c) for c in FINDINGS_SCHEMA if c in METRIC_COLUMNS}
    out.update(reference=REFERENCE_NONE, control_metric=None, control_value=None, control_ci_low=None,
               control_ci_high=None, control_n=None, no_effect=None, called=False)
    if kind in _CALLED_METRICS and row["stratum"] != STRATUM_OBSERVATIONAL:
        side = _CALLED_METRICS[kind]
        if row["stratum"] == STRATUM_GENERATED:
            control = controls.get((CONTROL_PREFIX + kind, *_control_key(row)))
            out.update(reference=REFERENCE_CONTROL, control_metric=CONTROL_PREFIX + kind)
            if control is not None:
                out.update(control_value=control["value"], control_ci_low=control["ci_low"],
                           control_ci_high=control["ci_high"], control_n=control["n"])
                if control["value"] is not None:
                    out["called"] = _excludes(row, control["ci_low"], control["ci_high"], side)
                    if side == "either":
                        # A signed gap compares images of one seed, so no change means 0; the control
                        # (another seed) can carry a shift of its own. Both must be excluded.
                        out["no_effect"] = _NO_EFFECT[kind]
                        out["called"] = out["called"] and _excludes(row, _NO_EFFECT[kind], _NO_EFFECT[kind], side)
        elif kind in _NO_EFFECT:
            no_effect = _NO_EFFECT[kind]
            out.update(reference=REFERENCE_NO_EFFECT, no_effect=no_effect,
                       called=_excludes(row, no_effect, no_effect, side))
    out["sentence"] = finding_sentence(out)
    return out


def assess_findings(metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per (non-control) metric row: its control beside it, whether a difference is called, a sentence.

    Columns: the metric row's ``metric, stratum, attribute, group, label, query, value, ci_low,
    ci_high, n, n_sources, note``; ``reference`` ("control", "no effect" or "none");
    ``control_metric, control_value, control_ci_low, control_ci_high, control_n`` (the
    control of the same stratum, attribute and label; a transition is compared with its
    attribute's control); ``no_effect`` (the value meaning no change, where there is no
    control); ``called``; ``sentence``. Ordered for a headline: called rows first, then by
    stratum, taking one row per (metric kind, attribute) in turn, largest effect first.
    """
    if metrics is None or metrics.is_empty():
        return pl.DataFrame(schema=FINDINGS_SCHEMA)
    rows = _rows(metrics)
    controls = {(r["metric"], *_control_key(r)): r for r in rows if r["metric"].startswith(CONTROL_PREFIX)}
    assessed = [_assess(r, controls) for r in rows if not r["metric"].startswith(CONTROL_PREFIX)]
    return pl.DataFrame(_headline_order(assessed), schema=FINDINGS_SCHEMA)


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
        if row["reference"] != REFERENCE_NONE and row["value"] is not None:
            return 1
        return 2 if row["value"] is not None else 3

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


# -- headlines ------------------------------------------------------------------------------------


def headline_findings(metrics: pl.DataFrame, max_items: int = 8) -> list[str]:
    """Up to ``max_items`` sentences: called findings first, then the other comparisons, then the rest."""
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    return assess_findings(metrics)["sentence"].head(max_items).to_list()


_TABLE_COLUMNS = ("metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n",
                  "n_sources", "control_value", "control_ci_low", "control_ci_high", "called", "note")


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


def any_bias_finding(metrics: pl.DataFrame) -> bool:
    """Whether any difference is called in the run's metrics."""
    return bool(assess_findings(metrics)["called"].any())


def models_line(manifest: Mapping[str, Any]) -> str:
    """'Models: generator img2img-x@rev, judge clip, audit clip.' plus the tiny-model warning."""
    parts = []
    for role, model in (manifest.get("models") or {}).items():
        revision = model.get("revision")
        parts.append(f"{role} {model.get('model')}" + (f" (revision {revision})" if revision else ""))
    line = "Models: " + ("; ".join(parts) if parts else "not recorded") + "."
    if manifest.get("tiny_models"):
        line += " These are tiny random-weight test models: the numbers below mean nothing."
    return line


def _md_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_cells(row: Mapping[str, Any]) -> dict[str, str]:
    """A headline-table row's value, interval and control as short text."""
    ci = f"[{number(row['ci_low'])}, {number(row['ci_high'])}]" if row["ci_low"] is not None else ""
    control = ""
    if row["control_value"] is not None:
        control = number(row["control_value"])
        if row["control_ci_low"] is not None:
            control += f" [{number(row['control_ci_low'])}, {number(row['control_ci_high'])}]"
    return {"value": number(row["value"]), "interval": ci, "control": control, "called": "yes" if row["called"] else ""}


def summary_markdown(manifest: Mapping[str, Any], metrics: pl.DataFrame, report_uri: str | None) -> str:
    """A markdown summary of one run (for a Prefect markdown artifact)."""
    lines = [f"# Counterfactual audit {_md_cell(manifest.get('run_id'))}", "", models_line(manifest), ""]
    dataset = manifest.get("dataset") or {}
    if dataset:
        lines += [
            f"Dataset **{_md_cell(dataset.get('name'))}** at `{_md_cell(dataset.get('uri'))}` "
            f"(fingerprint `{_md_cell(dataset.get('fingerprint'))}`).",
            "",
        ]
    lines += accounting_lines(manifest)
    findings = assess_findings(metrics)
    called = int(findings["called"].sum()) if findings.height else 0
    lines += ["", "## Findings", ""]
    if findings.height:
        lines.append(f"{called} difference(s) called (interval excludes the control's, or no change where there "
                     "was no control).")
        if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
            lines.append(f"**{REAL_VS_GENERATED_WARNING}**")
        lines.append("")
    lines += [f"- {_md_cell(s)}" for s in findings["sentence"].head(8).to_list()] or ["- no metrics were computed"]
    table = headline_table(metrics, max_rows=20)
    if table:
        lines += ["", "| metric | stratum | attribute | group | label | query | value | CI | control [CI] | called | n |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in table:
            cells = table_cells(row)
            lines.append("| " + " | ".join(_md_cell(v) for v in (
                row["metric"], row["stratum"], row["attribute"], row["group"], row["label"], row["query"],
                cells["value"], cells["interval"], cells["control"], cells["called"], row["n"])) + " |")
    if report_uri:
        lines += ["", f"[Open the full report]({report_uri})"]
    return "\n".join(lines) + "\n"


def accounting_lines(manifest: Mapping[str, Any]) -> list[str]:
    """Row accounting as sentences, with any problem the manifest recorded."""
    acc = manifest.get("row_accounting") or {}
    if not acc:
        return ["Row accounting: not recorded."]
    lines = [
        f"Rows: {acc.get('rows_in')} in = {acc.get('valid')} valid + {acc.get('quarantined')} quarantined.",
        f"Work items: {acc.get('planned')} planned = {acc.get('kept')} kept + {acc.get('dropped')} dropped "
        f"+ {acc.get('failed')} failed.",
    ]
    if manifest.get("cache_hits") is not None:
        lines.append(f"Cache hits: {manifest['cache_hits']}.")
    problems = manifest.get("row_accounting_problems")
    if problems is None:
        from counterfactual_lab.manifest import check_row_accounting

        problems = check_row_accounting(acc)
    lines += [f"ACCOUNTING DOES NOT CLOSE: {p}" for p in problems]
    return lines
