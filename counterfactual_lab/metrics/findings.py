"""Findings: which differences in the metrics table are called, which are confounded, and why not.

:func:`decide_findings` turns ``metrics.parquet`` into one row per metric row (control rows
sit beside the row they control, not on their own); the report writes each as a sentence
(:func:`counterfactual_lab.report.findings.assess_findings`). The statistics are already in the
table: the error control (:mod:`counterfactual_lab.metrics.error_control`) gave every row of the
run's family its decision level and the interval there (``ci_low_adjusted``, ``ci_high_adjusted``
at ``confidence_adjusted``), and its ``min_effect``. A row is:

* **called** (the model's bias) when it is a pair metric (``flip_rate``, ``prob_gap_abs``,
  ``prob_gap_signed`` and a generative model's probe gaps ``<F>_gap_abs``/``<F>_gap_signed``), its
  interval at its decision level is clear of its reference — 0 for a signed gap (its pairs share a
  seed, so 0 is no change), the control's interval at the same level for the flip rate and a
  mean |Δ| (only *above* counts: fewer changes than the generator's own are not bias) — its size
  (|value|, or value − control) is at least ``min_effect``, and nothing the generator changed
  along with the attribute explains it;
* **confounded** when it would be called but, on its transition (or for an attribute-wide row, on
  any transition of its attribute), a confound diagnostic *moved*: a negative-control outcome or an
  off-target drift row (:mod:`counterfactual_lab.metrics.diagnostics`) is itself clear of its
  reference and at least its threshold (``min_effect``, or ``judge.max_drift`` for drift). The
  difference may be the generator's, not the model's; ``confounded_by`` says what moved;
* **no difference detected** otherwise, with the reason (``reason``): "interval includes no
  change", "not above the control" or "below min_effect" (clear, but smaller than the smallest
  difference this audit calls a finding);
* **undefined** when the comparison could not be made: no value (no pairs), no interval, or no
  control (in the generated stratum a row needs its control, with an interval, to count);
* **reported** (never called): group and retrieval metrics, CITS, the observational stratum, the
  synthetic shift and the phrasing spread, a row of one phrasing of a probe asked in several (its
  pooled row is the comparison), and without a control (``evaluate_only``, ``real_vs_generated``)
  the flip rate, every mean |Δ| and ``answer_change``, which are positive whenever anything varies.

A called row of a probe asked in several phrasings (``audit.phrasings``) is ``robust`` when every
phrasing's gap has the same sign — a signed gap's value, or a row called above its control its
value minus that phrasing's control — else ``phrasing-dependent`` (``robustness``; null on every
other row: :mod:`counterfactual_lab.metrics.phrasings`).

Diagnostic rows get ``moved``, ``no difference detected`` or ``undefined``; never ``called``.

The run's verdict (:func:`bias_verdict`): "finding" when a row is called; else "confounded" when
a row is confounded; else "no finding" when everything was compared, "undefined" when some
attribute's comparison could not be made. A table written before the error-control columns is
decided on the interval it has (the family-wise one, else the configured one) with ``min_effect``
0.01 and no diagnostics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.config.intersections import split_stratified
from counterfactual_lab.evaluate.readings import MODALITY_TEXT
from counterfactual_lab.metrics.diagnostics import (
    DRIFT_PREFIX,
    WHOLE_IMAGE,
    diagnostic_words,
    is_channel,
    is_diagnostic,
)
from counterfactual_lab.metrics.error_control import control_of, controls_of, reference_side
from counterfactual_lab.metrics.intervals import interval_at, percent_level
from counterfactual_lab.metrics.phrasings import PHRASING_DEPENDENT, ROBUST
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    DEFAULT_MODALITY,
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

# A row's verdict.
VERDICT_CALLED = "called"
VERDICT_CONFOUNDED = "confounded"
VERDICT_MOVED = "moved"  # a confound diagnostic that moved: it marks rows confounded, it is not called
VERDICT_NOT_DETECTED = "no difference detected"
VERDICT_UNDEFINED = "undefined"
VERDICT_REPORTED = "reported"

# Why a row is (not) called (``reason``).
REASON_CALLED = "called"
REASON_CONFOUNDED = "confounded"
REASON_MOVED = "moved"
REASON_INCLUDES_ZERO = "interval includes no change"
REASON_NOT_ABOVE = "not above the control"
REASON_BELOW_MIN_EFFECT = "below min_effect"
REASON_NO_INTERVAL = "no interval"
REASON_NO_CONTROL = "no control"
REASON_NO_VALUE = "no value"

# The minimum effect of a table written before the error-control columns.
LEGACY_MIN_EFFECT = 0.01

METRIC_COLUMNS = tuple(METRICS_SCHEMA)

DECISIONS_SCHEMA = {
    "metric": pl.String, "stratum": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String,
    "query": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_sources": pl.Int64, "note": pl.String,
    "reference": pl.String,  # "control", "no effect" or "none" (descriptive: never called)
    "control_metric": pl.String, "control_value": pl.Float64, "control_ci_low": pl.Float64,
    "control_ci_high": pl.Float64, "control_n": pl.Int64, "no_effect": pl.Float64,
    # The intervals the decision is made at (null off the family): the row's and its control's.
    "ci_low_adjusted": pl.Float64, "ci_high_adjusted": pl.Float64,
    "control_ci_low_adjusted": pl.Float64, "control_ci_high_adjusted": pl.Float64,
    "confidence_adjusted": pl.Float64, "comparisons": pl.Int64,
    "p_value": pl.Float64, "p_adjusted": pl.Float64, "min_effect": pl.Float64,
    "diagnostic": pl.Boolean,  # a confound diagnostic (negative control, drift): moves, never called
    "verdict": pl.String,  # called, confounded, moved, no difference detected, undefined, reported
    "reason": pl.String,  # why (REASON_*)
    "confounded_by": pl.String,  # what the generator changed along with the attribute, where confounded
    "called": pl.Boolean,
    # What a skew or NDKL row was measured against (schema.RANKING_SCHEMA; null elsewhere).
    "protocol": pl.String, "k": pl.Int64, "desired": pl.String,
    # What a pair row's sides differ in: image, text or both (metrics/modalities.py).
    "modality": pl.String,
    # The designs' columns (schema.DESIGNS_SCHEMA), and whether a called row holds in every phrasing.
    "phrasing": pl.String, "measure": pl.String,
    "robustness": pl.String,  # "robust" or "phrasing-dependent" on a called row of a probe with phrasings; else null
}

# A run's verdict (bias_verdict).
RUN_FINDING, RUN_CONFOUNDED, RUN_NO_FINDING, RUN_UNDEFINED = "finding", "confounded", "no finding", "undefined"


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
        for column in ("value", "ci_low", "ci_high", "se", "ci_low_adjusted", "ci_high_adjusted"):
            if missing(row[column]):
                row[column] = None
    return rows


def _size(row: Mapping[str, Any], side: str, control: Mapping[str, Any] | None) -> float:
    """How large the difference is: |value| from 0, or value − the control's."""
    if side == "either":
        return abs(row["value"])
    return row["value"] - (control["value"] if control and control["value"] is not None else 0.0)


def _control_at(control: Mapping[str, Any], level: float) -> tuple[float | None, float | None]:
    """The control's interval at ``level`` (the level of the row it sits beside)."""
    if control.get("se") is None or control.get("interval_method") is None or control.get("value") is None:
        return None, None
    low, high = interval_at(control["interval_method"], control["value"], control["se"], control["n"] or 1,
                            control["n_sources"] or 0, level)
    low, high = float(low), float(high)
    return (None, None) if not (np.isfinite(low) and np.isfinite(high)) else (low, high)


def _clear(out: Mapping[str, Any], side: str, legacy: bool) -> bool:
    """Whether the row's decision interval is clear of its reference (strictly)."""
    if legacy:
        low, high = ((out["ci_low_adjusted"], out["ci_high_adjusted"]) if out["ci_low_adjusted"] is not None
                     else (out["ci_low"], out["ci_high"]))
        control_high = (out["control_ci_high_adjusted"] if out["control_ci_high_adjusted"] is not None
                        else out["control_ci_high"])
    else:
        low, high, control_high = out["ci_low_adjusted"], out["ci_high_adjusted"], out["control_ci_high_adjusted"]
    if low is None or high is None:
        return False
    if side == "either":
        return low > 0 or high < 0
    return control_high is not None and low > control_high


def _assess(row: dict[str, Any], controls: Mapping[tuple, dict[str, Any]], legacy: bool) -> dict[str, Any]:
    kind = metric_kind(row["metric"])
    out = {c: row.get(c) for c in DECISIONS_SCHEMA if c in METRIC_COLUMNS}
    out.update(reference=REFERENCE_NONE, control_metric=None, control_value=None, control_ci_low=None,
               control_ci_high=None, control_n=None, no_effect=None, control_ci_low_adjusted=None,
               control_ci_high_adjusted=None, diagnostic=is_diagnostic(kind), verdict=VERDICT_REPORTED,
               reason=None, confounded_by=None, called=False, robustness=None, _stat_large=False)
    side = reference_side(kind)
    generated = row["stratum"] == STRATUM_GENERATED
    whole_image = out["diagnostic"] and row.get("label") == WHOLE_IMAGE  # no person mask: reported only
    one_phrasing = row.get("phrasing") is not None  # its pooled row is the comparison
    if (side is None or row["stratum"] == STRATUM_OBSERVATIONAL or (side == "above" and not generated) or whole_image
            or one_phrasing):
        # Descriptive, or a mean |Δ| / flip rate without a control: reported, never compared.
        out.update(ci_low_adjusted=None, ci_high_adjusted=None, confidence_adjusted=None, comparisons=None,
                   p_value=None, p_adjusted=None, min_effect=None)
        return out
    if side == "either":
        out["no_effect"] = 0.0
    control = control_of(row, controls) if generated else None
    out["reference"] = REFERENCE_CONTROL if generated else REFERENCE_NO_EFFECT
    if generated:
        out["control_metric"] = CONTROL_PREFIX + kind
        if control is not None:
            out.update(control_value=control["value"], control_ci_low=control["ci_low"], control_ci_high=control["ci_high"],
                       control_n=control["n"])
            level = row.get("confidence_adjusted")
            if legacy:
                out.update(control_ci_low_adjusted=control.get("ci_low_adjusted"),
                           control_ci_high_adjusted=control.get("ci_high_adjusted"))
            elif level is not None:
                out["control_ci_low_adjusted"], out["control_ci_high_adjusted"] = _control_at(control, level)
    if legacy and out["min_effect"] is None:
        out["min_effect"] = LEGACY_MIN_EFFECT
    if row["value"] is None:
        out.update(verdict=VERDICT_UNDEFINED, reason=REASON_NO_VALUE)
    elif generated and (control is None or control["value"] is None or control["ci_low"] is None
                        or (not legacy and control.get("se") is None)):
        out.update(verdict=VERDICT_UNDEFINED, reason=REASON_NO_CONTROL)
    elif row["ci_low"] is None or row["ci_high"] is None or (not legacy and not row.get("in_family")):
        out.update(verdict=VERDICT_UNDEFINED, reason=REASON_NO_INTERVAL)
    elif not _clear(out, side, legacy):
        out.update(verdict=VERDICT_NOT_DETECTED, reason=REASON_INCLUDES_ZERO if side == "either" else REASON_NOT_ABOVE)
    elif out["min_effect"] is not None and _size(row, side, control) < out["min_effect"]:
        out.update(verdict=VERDICT_NOT_DETECTED, reason=REASON_BELOW_MIN_EFFECT)
    elif out["diagnostic"]:
        out.update(verdict=VERDICT_MOVED, reason=REASON_MOVED)
    else:
        out.update(verdict=VERDICT_CALLED, reason=REASON_CALLED, called=True, _stat_large=True)
    return out


def diagnostic_phrase(row: Mapping[str, Any]) -> str:
    """One moved diagnostic in words, with its interval and threshold, for ``confounded_by``:
    "the mean blue outside the person by +0.0157 (+4.0 grey levels) [0.0157, 0.0157] on female→male,
    at least judge.max_drift 0.01"."""
    value = row["value"]
    what = diagnostic_words(row["metric"], row.get("label"), row.get("query"))
    grey = f" ({value * 255:+.1f} grey levels)" if is_channel(row["metric"]) else ""
    low, high = row.get("ci_low_adjusted"), row.get("ci_high_adjusted")
    interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
    level = f" at the {percent_level(row['confidence_adjusted'])} level" if row.get("confidence_adjusted") else ""
    where = f" on {row['group']}" if row.get("group") else " over every transition"
    key = "judge.max_drift" if row["metric"].startswith("drift_") else "audit.min_effect"
    return (f"{what} by {value:+.3g}{grey}{interval}{level}{where}, "
            f"at least {key} {row['min_effect']:.3g}")


def _confounds(moved: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a moved diagnostic bears on ``row``'s modality: a negative control on its own modality's
    pairs; off-target drift (what the generator changed in the image) wherever the image changed
    (``image``, ``both``), never on a ``text`` row, whose two sides are one image."""
    modality, own = row.get("modality") or DEFAULT_MODALITY, moved.get("modality") or DEFAULT_MODALITY
    if moved["metric"].startswith(DRIFT_PREFIX):
        return modality != MODALITY_TEXT
    return modality == own


def _mark_confounded(decided: list[dict[str, Any]]) -> None:
    """Rule: a row that would be called is confounded where a diagnostic moved on its transition, or
    attribute-wide; an attribute-wide row where one moved on any transition of its attribute; in its
    modality (:func:`_confounds`). An intersection's cell (``gender | race=Black``) is confounded by
    its own diagnostics and by its attribute's (the drift is read per attribute)."""
    moved: dict[tuple, list[dict[str, Any]]] = {}
    for row in decided:
        if row["verdict"] == VERDICT_MOVED:
            moved.setdefault((row["stratum"], row["attribute"]), []).append(row)
    for row in decided:
        if not row["called"]:
            continue
        attribute = row["attribute"]
        candidates = moved.get((row["stratum"], attribute), [])
        if split_stratified(str(attribute))[1]:
            candidates = candidates + moved.get((row["stratum"], split_stratified(attribute)[0]), [])
        causes = [m for m in candidates if (row["group"] is None or m["group"] is None or m["group"] == row["group"])
                  and _confounds(m, row)]
        if causes:
            row.update(called=False, verdict=VERDICT_CONFOUNDED, reason=REASON_CONFOUNDED,
                       confounded_by="; ".join(diagnostic_phrase(m) for m in causes))


def _phrasing_key(row: Mapping[str, Any]) -> tuple:
    return (row["metric"], row["stratum"], row["attribute"], row.get("group"), row.get("label"), row.get("query"),
            row.get("measure"), row.get("modality") or DEFAULT_MODALITY)


def _mark_robustness(decided: list[dict[str, Any]], rows: list[dict[str, Any]], controls: Mapping[tuple, dict[str, Any]]
                     ) -> None:
    """Rule: a called row with per-phrasing rows is robust when every phrasing's gap has one sign (module doc)."""
    phrased: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("phrasing") is not None and not row["metric"].startswith(CONTROL_PREFIX):
            phrased.setdefault(_phrasing_key(row), []).append(row)
    for row in decided:
        members = phrased.get(_phrasing_key(row)) if row["called"] and row.get("phrasing") is None else None
        if not members:
            continue
        gaps = []
        for member in members:
            if member["value"] is None:
                gaps.append(None)
            elif row["no_effect"] is not None:  # a signed gap: its sign
                gaps.append(member["value"])
            else:  # above its control: the excess over that phrasing's control
                control = control_of(member, controls)
                reference = control["value"] if control and control["value"] is not None else row["control_value"]
                gaps.append(None if reference is None else member["value"] - reference)
        signs = {float(np.sign(g)) for g in gaps if g is not None}
        same = None not in gaps and len(signs) == 1 and 0.0 not in signs
        row["robustness"] = ROBUST if same else PHRASING_DEPENDENT


def decided_rows(metrics: pl.DataFrame | None) -> list[dict[str, Any]]:
    """:func:`decide_findings` as a list of dicts, in the metrics table's order."""
    if metrics is None or metrics.is_empty():
        return []
    # A table written before the error control has no decisions in it (no in_family, or all null).
    legacy = "in_family" not in metrics.columns or metrics["in_family"].null_count() == metrics.height
    # People's review rows are about the judge, not the model under audit: the report shows them apart.
    rows = [r for r in _rows(metrics) if r["stratum"] != STRATUM_REVIEW]
    controls = controls_of(rows)
    decided = [_assess(r, controls, legacy) for r in rows if not r["metric"].startswith(CONTROL_PREFIX)]
    _mark_confounded(decided)
    _mark_robustness(decided, rows, controls)
    for row in decided:
        row.pop("_stat_large", None)
    return decided


def decide_findings(metrics: pl.DataFrame | None) -> pl.DataFrame:
    """One row per (non-control) metric row: its control beside it, whether a difference is called,
    and why not (:data:`DECISIONS_SCHEMA`; module doc)."""
    return pl.DataFrame(decided_rows(metrics), schema=DECISIONS_SCHEMA)


# -- headlines ------------------------------------------------------------------------------------


def any_bias_finding(metrics: pl.DataFrame) -> bool:
    """Whether any difference is called in the run's metrics (False also when nothing could be
    compared or everything called was confounded: :func:`bias_verdict` tells them apart)."""
    return bool(decide_findings(metrics)["called"].any())


def undefined_comparisons(findings: pl.DataFrame) -> pl.DataFrame:
    """The whole-attribute bias comparisons (group null) that could not be made: verdict undefined."""
    return findings.filter((pl.col("verdict") == VERDICT_UNDEFINED) & pl.col("group").is_null()
                           & ~pl.col("diagnostic").fill_null(False))


def confounded_attributes(findings: pl.DataFrame) -> list[tuple[str, str]]:
    """(stratum, attribute) of every attribute with a confounded row, in order."""
    confounded = findings.filter(pl.col("verdict") == VERDICT_CONFOUNDED)
    return list(dict.fromkeys(zip(confounded["stratum"].to_list(), confounded["attribute"].to_list())))


def run_verdict(findings: pl.DataFrame) -> str:
    """:func:`bias_verdict` of assessed findings (module doc)."""
    if findings["called"].any():
        return RUN_FINDING
    if (findings["verdict"] == VERDICT_CONFOUNDED).any():
        return RUN_CONFOUNDED
    compared = findings.filter(pl.col("verdict").is_in([VERDICT_NOT_DETECTED, VERDICT_UNDEFINED])
                               & ~pl.col("diagnostic").fill_null(False))
    if compared.is_empty() or not undefined_comparisons(findings).is_empty():
        return RUN_UNDEFINED
    return RUN_NO_FINDING


def bias_verdict(metrics: pl.DataFrame) -> str:
    """The run's answer: "finding" (some difference called), "confounded" (nothing called, some
    difference moved with what the generator changed along with the attribute), "no finding"
    (every attribute was compared and nothing called) or "undefined" (nothing called, and some
    attribute's comparison could not be made, or the run has no comparison at all)."""
    return run_verdict(decide_findings(metrics))
