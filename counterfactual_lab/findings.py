"""Findings: which differences in the metrics table are called, each beside its control, in plain words.

:func:`assess_findings` turns ``metrics.parquet`` into one row per metric row (control rows
sit beside the row they control, not on their own):

* **Counterfactual pair metrics** (``flip_rate``, ``prob_gap_abs``, ``prob_gap_signed``, and a
  generative model's probe gaps ``<F>_gap_abs``/``<F>_gap_signed``: ``yes_prob``, ``rating``,
  ``max_toxicity``, … per prompt) are the comparisons the audit can call. In the ``generated``
  stratum each is compared with its control of the same attribute (and label, and prompt:
  ``query``): ``control_flip_rate``, ``control_yes_prob_gap_abs`` etc., the change when nothing
  protected changes (same source, same value, another seed). A difference is **called** only
  when the metric's interval excludes the control's — the intervals do not overlap; for the
  flip rate and an absolute gap only *above* the control counts (a change smaller than the
  generator's own variation is not bias); a signed gap's interval must lie beyond ±band, the
  largest change the control shows either way (its signed interval, and the top of its mean |Δ|):
  its pairs share a seed, so 0 is no change, and a consistent shift smaller than what a seed
  change alone does is not called (``control_band``). Otherwise the sentence
  (:mod:`counterfactual_lab.finding_sentences`) says "no difference detected at this sample
  size" with n. Where the run has no
  control (``real_vs_generated``: reconstruction off; ``evaluate_only``), the flip rate and the
  signed gaps are compared with the no-effect value (0) and the sentence says there was no
  control; an absolute gap, positive whenever anything varies, is then reported, not called.
* **Family-wise.** A run makes many such comparisons (attributes × transitions × labels ×
  metrics) and "any bias finding" is any one of them, so each is decided on its interval at the
  family-wise level 1 − (1 − c)/m for the run's m callable comparisons (Bonferroni:
  ``ci_low_adjusted``/``ci_high_adjusted`` of the row and of its control, from the same
  replicates as the configured interval, which the sentence still shows). A row without the
  family-wise columns (a table written before them) is decided on its configured interval.
* **Undefined is not "no difference".** A comparison with no value (no pairs: e.g. every set
  of the attribute dropped by the judge), no interval or no control has ``verdict``
  "undefined"; :func:`bias_verdict` of a run is "finding", "no finding" or "undefined" (no call,
  and some attribute's comparison could not be made).
* **Group and retrieval metrics** (selection rate, parity, equalized odds, skew, NDKL) and CITS
  are reported with their intervals but never called: no control measures how much of them
  the generator's own variation produces, and spreads such as max − min or NDKL are ≥ 0 by
  construction, so "excludes 0" is no evidence.
* The ``observational`` stratum (originals only) is descriptive and never called.

"Any bias finding" of a run = any row with ``called`` (:func:`any_bias_finding`). :func:`headline_findings`,
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
    percent_level,
    interval,
    metric_k,
    metric_kind,
    missing,
    number,
    percent,
    points,
)
from counterfactual_lab.finding_sentences import VERDICT_CALLED, VERDICT_NOT_DETECTED, VERDICT_REPORTED, VERDICT_UNDEFINED
from counterfactual_lab.metrics.counterfactual_fairness import (
    GAP_ABS_SUFFIX,
    GAP_SIGNED_SUFFIX,
    called_side,
    no_effect_value,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    METRICS_SCHEMA,
    STRATA,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
)

METRIC_COLUMNS = tuple(METRICS_SCHEMA)

FINDINGS_SCHEMA = {
    "metric": pl.String, "stratum": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String,
    "query": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_sources": pl.Int64, "note": pl.String,
    "reference": pl.String,  # "control", "no effect" or "none" (descriptive: never called)
    "control_metric": pl.String, "control_value": pl.Float64, "control_ci_low": pl.Float64,
    "control_ci_high": pl.Float64, "control_n": pl.Int64, "no_effect": pl.Float64,
    # A signed gap's band: the largest change the control shows either way (its signed interval and
    # the upper end of its mean |Δ|); the gap is called only beyond ±control_band.
    "control_band": pl.Float64,
    # The family-wise intervals the call is decided on (null where the table has none).
    "ci_low_adjusted": pl.Float64, "ci_high_adjusted": pl.Float64,
    "control_ci_low_adjusted": pl.Float64, "control_ci_high_adjusted": pl.Float64,
    "confidence_adjusted": pl.Float64, "comparisons": pl.Int64,
    "verdict": pl.String,  # "called", "no difference detected", "undefined" or "reported" (never called)
    "called": pl.Boolean, "sentence": pl.String,
}

# A run's verdict (bias_verdict).
RUN_FINDING, RUN_NO_FINDING, RUN_UNDEFINED = "finding", "no finding", "undefined"

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
    """What a row shares with its control: stratum, attribute, label (a label probability's gap) and
    query (a generative probe's prompt); a transition is compared with its attribute's control."""
    return (row["stratum"], row["attribute"], row["label"], row["query"])


def _call_interval(row: Mapping[str, Any], prefix: str = "") -> tuple[float | None, float | None]:
    """The interval a call is decided on: the family-wise one where the row carries it, else the configured one."""
    if row.get("comparisons") is not None:
        low, high = row.get(f"{prefix}ci_low_adjusted"), row.get(f"{prefix}ci_high_adjusted")
    else:
        low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    return (None if missing(low) else low), (None if missing(high) else high)


def _excludes(interval: tuple[float | None, float | None], low: float | None, high: float | None, side: str) -> bool:
    """Whether ``interval`` lies above [low, high] (or, for ``either``, above or below it)."""
    row_low, row_high = interval
    if row_low is None or row_high is None or low is None or high is None:
        return False
    above = row_low > high
    below = row_high < low
    return above or (side == "either" and below)


def _verdict(out: Mapping[str, Any]) -> str:
    if out["reference"] == REFERENCE_NONE:
        return VERDICT_REPORTED
    if out["called"]:
        return VERDICT_CALLED
    if out["value"] is None or missing(out["ci_low"]) or missing(out["ci_high"]):
        return VERDICT_UNDEFINED
    if out["reference"] == REFERENCE_CONTROL and (out["control_value"] is None or missing(out["control_ci_low"])):
        return VERDICT_UNDEFINED
    return VERDICT_NOT_DETECTED


def _assess(row: dict[str, Any], controls: Mapping[tuple, dict[str, Any]]) -> dict[str, Any]:
    kind = metric_kind(row["metric"])
    out = {c: row.get(c) for c in FINDINGS_SCHEMA if c in METRIC_COLUMNS}
    out.update(reference=REFERENCE_NONE, control_metric=None, control_value=None, control_ci_low=None,
               control_ci_high=None, control_n=None, no_effect=None, control_ci_low_adjusted=None,
               control_ci_high_adjusted=None, control_band=None, called=False)
    side = called_side(kind)
    if side is not None and row["stratum"] != STRATUM_OBSERVATIONAL:
        interval = _call_interval(row)
        if row["stratum"] == STRATUM_GENERATED:
            control = controls.get((CONTROL_PREFIX + kind, *_control_key(row)))
            out.update(reference=REFERENCE_CONTROL, control_metric=CONTROL_PREFIX + kind)
            if control is not None:
                out.update(control_value=control["value"], control_ci_low=control["ci_low"],
                           control_ci_high=control["ci_high"], control_n=control["n"],
                           control_ci_low_adjusted=control.get("ci_low_adjusted"),
                           control_ci_high_adjusted=control.get("ci_high_adjusted"))
                if control["value"] is not None:
                    low, high = _call_interval(control)
                    if side == "either" and low is not None and high is not None:
                        # A signed gap compares images of one seed, so no change means 0. It is a
                        # finding only when it is larger, either way, than what the generator alone
                        # does: beyond ±band, the band reaching the control's signed interval (another
                        # seed can shift every image alike) and the top of its mean |Δ| (how far a seed
                        # change moves one image). A consistent shift smaller than that is not called.
                        out["no_effect"] = no_effect_value(kind)
                        magnitude = controls.get((CONTROL_PREFIX + kind.replace(GAP_SIGNED_SUFFIX, GAP_ABS_SUFFIX),
                                                  *_control_key(row)))
                        band = max(abs(low), abs(high))
                        if magnitude is not None and magnitude["value"] is not None:
                            band = max(band, _call_interval(magnitude)[1] or 0.0)
                        out["control_band"] = band
                        low, high = -band, band
                    out["called"] = _excludes(interval, low, high, side)
        elif no_effect_value(kind) is not None:
            no_effect = no_effect_value(kind)
            out.update(reference=REFERENCE_NO_EFFECT, no_effect=no_effect,
                       called=_excludes(interval, no_effect, no_effect, side))
    if out["reference"] == REFERENCE_NONE:
        # Rows nothing is called on carry no family-wise interval.
        out.update(ci_low_adjusted=None, ci_high_adjusted=None, confidence_adjusted=None, comparisons=None)
    out["verdict"] = _verdict(out)
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
    """Whether any difference is called in the run's metrics (False also when nothing could be
    compared: :func:`bias_verdict` tells "no finding" from "undefined")."""
    return bool(assess_findings(metrics)["called"].any())


def _undefined_comparisons(findings: pl.DataFrame) -> pl.DataFrame:
    """The whole-attribute comparisons (group null) that could not be made: verdict undefined."""
    return findings.filter((pl.col("verdict") == VERDICT_UNDEFINED) & pl.col("group").is_null())


def bias_verdict(metrics: pl.DataFrame) -> str:
    """The run's answer: "finding" (some difference called), "no finding" (every attribute was
    compared and nothing called) or "undefined" (nothing called, and some attribute's comparison
    could not be made — no pairs, no interval, no control — or the run has no comparison at all)."""
    findings = assess_findings(metrics)
    if findings["called"].any():
        return RUN_FINDING
    compared = findings.filter(pl.col("verdict").is_in([VERDICT_NOT_DETECTED, VERDICT_UNDEFINED]))
    if compared.is_empty() or not _undefined_comparisons(findings).is_empty():
        return RUN_UNDEFINED
    return RUN_NO_FINDING


def verdict_lines(findings: pl.DataFrame) -> list[str]:
    """Lines under the count of called differences: the family-wise level the calls are made at,
    and each attribute whose comparison is undefined, with the reason (so no reader takes a run
    that could compare nothing for one that found no difference)."""
    lines = []
    family = findings.filter(pl.col("comparisons").is_not_null())
    if family.height:
        m, level = int(family["comparisons"].max()), float(family["confidence_adjusted"].min())
        lines.append(f"Calls are family-wise over the run's {m} comparisons (Bonferroni: each decided on "
                     f"{percent_level(level)} intervals), so a run without any bias gets any call with probability "
                     f"about {percent_level(min(1.0, m * (1.0 - level)))} at most.")
    undefined = _undefined_comparisons(findings)
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
        lines += verdict_lines(findings)
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
