"""Findings: which differences in the metrics table are called, each beside its control, and why.

:func:`decide_findings` turns ``metrics.parquet`` into one row per metric row (control rows
sit beside the row they control, not on their own); the report writes each as a sentence
(:func:`counterfactual_lab.report.findings.assess_findings`):

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
  (:mod:`counterfactual_lab.report.sentences`) says "no difference detected at this sample
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

"Any bias finding" of a run = any row with ``called`` (:func:`any_bias_finding`). The report's
headlines, the Prefect summary, ``cflab report`` and the HTML report all read this one decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.counterfactual_fairness import (
    GAP_ABS_SUFFIX,
    GAP_SIGNED_SUFFIX,
    called_side,
    no_effect_value,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    METRICS_SCHEMA,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
    STRATUM_REVIEW,
    metric_kind,
    missing,
)

# What a row is compared with: its control, the no-effect value (no control in the run), or
# nothing (descriptive metrics: reported, never called).
REFERENCE_CONTROL = "control"
REFERENCE_NO_EFFECT = "no effect"
REFERENCE_NONE = "none"

# A row's verdict: a difference called; compared and none detected; the comparison could not be
# made (no value, no interval, no control); reported, never called (descriptive metrics).
VERDICT_CALLED = "called"
VERDICT_NOT_DETECTED = "no difference detected"
VERDICT_UNDEFINED = "undefined"
VERDICT_REPORTED = "reported"

METRIC_COLUMNS = tuple(METRICS_SCHEMA)

DECISIONS_SCHEMA = {
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
    "called": pl.Boolean,
    # What a skew or NDKL row was measured against (schema.RANKING_SCHEMA; null elsewhere).
    "protocol": pl.String, "k": pl.Int64, "desired": pl.String,
}

# A run's verdict (bias_verdict).
RUN_FINDING, RUN_NO_FINDING, RUN_UNDEFINED = "finding", "no finding", "undefined"


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
    out = {c: row.get(c) for c in DECISIONS_SCHEMA if c in METRIC_COLUMNS}
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
    return out


def decided_rows(metrics: pl.DataFrame | None) -> list[dict[str, Any]]:
    """:func:`decide_findings` as a list of dicts, in the metrics table's order."""
    if metrics is None or metrics.is_empty():
        return []
    # People's review rows are about the judge, not the model under audit: the report shows them apart.
    rows = [r for r in _rows(metrics) if r["stratum"] != STRATUM_REVIEW]
    controls = {(r["metric"], *_control_key(r)): r for r in rows if r["metric"].startswith(CONTROL_PREFIX)}
    return [_assess(r, controls) for r in rows if not r["metric"].startswith(CONTROL_PREFIX)]


def decide_findings(metrics: pl.DataFrame | None) -> pl.DataFrame:
    """One row per (non-control) metric row: its control beside it, and whether a difference is called.

    Columns: the metric row's ``metric, stratum, attribute, group, label, query, value, ci_low,
    ci_high, n, n_sources, note``; ``reference`` ("control", "no effect" or "none");
    ``control_metric, control_value, control_ci_low, control_ci_high, control_n`` (the
    control of the same stratum, attribute and label; a transition is compared with its
    attribute's control); ``no_effect`` (the value meaning no change, where there is no
    control); the family-wise intervals; ``verdict``; ``called``.
    """
    return pl.DataFrame(decided_rows(metrics), schema=DECISIONS_SCHEMA)


# -- headlines ------------------------------------------------------------------------------------


def any_bias_finding(metrics: pl.DataFrame) -> bool:
    """Whether any difference is called in the run's metrics (False also when nothing could be
    compared: :func:`bias_verdict` tells "no finding" from "undefined")."""
    return bool(decide_findings(metrics)["called"].any())


def undefined_comparisons(findings: pl.DataFrame) -> pl.DataFrame:
    """The whole-attribute comparisons (group null) that could not be made: verdict undefined."""
    return findings.filter((pl.col("verdict") == VERDICT_UNDEFINED) & pl.col("group").is_null())


def bias_verdict(metrics: pl.DataFrame) -> str:
    """The run's answer: "finding" (some difference called), "no finding" (every attribute was
    compared and nothing called) or "undefined" (nothing called, and some attribute's comparison
    could not be made — no pairs, no interval, no control — or the run has no comparison at all)."""
    findings = decide_findings(metrics)
    if findings["called"].any():
        return RUN_FINDING
    compared = findings.filter(pl.col("verdict").is_in([VERDICT_NOT_DETECTED, VERDICT_UNDEFINED]))
    if compared.is_empty() or not undefined_comparisons(findings).is_empty():
        return RUN_UNDEFINED
    return RUN_NO_FINDING
