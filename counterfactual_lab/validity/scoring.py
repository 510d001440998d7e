"""Score one audit of the planted-bias world against the truth, and the bench's arms as rates.

Inputs are a run's ``metrics.parquet`` and ``findings.assess_findings(metrics)`` (one row per
comparable metric row, with the metric row's ``metric, stratum, attribute, group, label``, a
boolean ``called`` and a ``verdict``). Per run:

* ``any_called``: some finding row is called — for the fair model, a false positive;
* ``run_verdict``: the run's answer (``finding``, ``confounded``, ``no finding``, ``undefined``);
* ``confounded``: how many rows are confounded (would be called, but moved with the generator);
* ``comparisons``: m, the rows in the run's family;
* ``found``: the planted finding is called **with the truth's sign**: the ``prob_gap_signed`` row
  of stratum ``generated`` for the biased label and transition (``group`` = "source→target");
* ``covered``: that metric row's 95% interval [ci_low, ci_high] contains the planted effect.

For a run that reads its pairs in several modalities (``audit.modalities``; the text-side arm),
:func:`score_modalities` adds ``text_called`` (the planted row of the ``text`` modality called with
the truth's sign) and ``image_called`` (any finding of the ``image`` modality called).

Over runs (:func:`arm_figures`), shares of runs: ``false_positive_rate`` (any row called),
``power`` (found), ``coverage`` (covered; a run whose row is missing or undefined counts as
neither found nor covered), ``confounded_rate`` (any row confounded; in the confound arm: run
verdict ``confounded``), ``finding_rate`` (run verdict ``finding``), ``text_called_rate`` and
``image_called_rate``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.metrics.findings import VERDICT_CONFOUNDED, run_verdict

PLANTED_METRIC = "prob_gap_signed"
FINDINGS_STRATUM = "generated"
KEY_COLUMNS = ("metric", "stratum", "attribute", "group", "label")


@dataclass
class RunVerdict:
    """What one audit of one world said, scored against the truth."""

    any_called: bool
    called: list[str] = field(default_factory=list)  # the called findings, as sentences (or keys)
    called_strata: list[str] = field(default_factory=list)  # the strata those findings are in
    run_verdict: str | None = None
    confounded: int = 0  # rows confounded
    comparisons: int | None = None  # m
    found: bool | None = None  # None when no planted effect was asked about (fair runs)
    covered: bool | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    n_sources: int | None = None
    note: str | None = None
    text_called: bool | None = None  # score_modalities: the planted row of the text modality, called
    image_called: bool | None = None  # ... any finding of the image modality called

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {frame.columns})")


def _select(frame: pl.DataFrame, *, metric: str, stratum: str, attribute: str, label: str, group: str) -> pl.DataFrame:
    return frame.filter(
        (pl.col("metric") == metric) & (pl.col("stratum") == stratum) & (pl.col("attribute") == attribute)
        & (pl.col("label") == label) & (pl.col("group") == group)
    )


def _describe(row: dict[str, Any]) -> str:
    if row.get("sentence"):
        return str(row["sentence"])
    parts = [str(row.get(c)) for c in KEY_COLUMNS if row.get(c) is not None]
    return " / ".join(parts)


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def score_run(
    metrics: pl.DataFrame,
    findings: pl.DataFrame,
    *,
    planted: float | None = None,
    attribute: str = "gender",
    label: str = "doctor",
    transition: str = "female→male",
) -> RunVerdict:
    """Score one run (see the module docstring). ``planted`` None: a fair run (no planted effect)."""
    _require(findings, ("called",), "the findings table (assess_findings)")
    called_rows = findings.filter(pl.col("called").fill_null(False))
    verdict = RunVerdict(
        any_called=called_rows.height > 0,
        called=[_describe(r) for r in called_rows.to_dicts()],
        called_strata=sorted({str(s) for s in called_rows["stratum"]}) if "stratum" in called_rows.columns else [],
    )
    if {"verdict", "diagnostic"} <= set(findings.columns):
        verdict.run_verdict = run_verdict(findings)
        verdict.confounded = int((findings["verdict"] == VERDICT_CONFOUNDED).sum())
    if "comparisons" in findings.columns and findings["comparisons"].drop_nulls().len():
        verdict.comparisons = int(findings["comparisons"].drop_nulls().max())
    if planted is None:
        return verdict
    _require(metrics, (*KEY_COLUMNS, "value", "ci_low", "ci_high", "n"), "the metrics table")
    _require(findings, KEY_COLUMNS, "the findings table (assess_findings)")
    keys = dict(metric=PLANTED_METRIC, stratum=FINDINGS_STRATUM, attribute=attribute, label=label, group=transition)
    rows = _select(metrics, **keys)
    if rows.height != 1:
        verdict.found = verdict.covered = False
        verdict.note = f"{rows.height} metric rows for {keys} (expected 1)"
        return verdict
    row = rows.row(0, named=True)
    verdict.value, verdict.ci_low, verdict.ci_high, verdict.n = row["value"], row["ci_low"], row["ci_high"], row["n"]
    verdict.n_sources = row.get("n_sources")
    finding = _select(findings, **keys)
    called = bool(finding.height == 1 and finding["called"].fill_null(False)[0])
    # Power counts a call with the truth's sign only: a call the wrong way is not the planted bias.
    right_sign = _finite(row["value"]) and np.sign(row["value"]) == np.sign(planted) and planted != 0
    verdict.found = called and bool(right_sign)
    if _finite(row["ci_low"]) and _finite(row["ci_high"]):
        verdict.covered = bool(row["ci_low"] <= planted <= row["ci_high"])
    else:
        verdict.covered = False
        verdict.note = f"the planted metric row has no interval ({row.get('note')})"
    return verdict


def score_modalities(
    verdict: RunVerdict, findings: pl.DataFrame, *, sign: float = 1.0, attribute: str = "gender", label: str = "doctor",
    transition: str = "female→male",
) -> RunVerdict:
    """``verdict`` with ``text_called`` (the planted row — ``prob_gap_signed``, stratum generated,
    ``label``, ``transition`` — of the ``text`` modality called with the sign ``sign``) and
    ``image_called`` (any called finding of the ``image`` modality; a table without modalities is all image)."""
    _require(findings, (*KEY_COLUMNS, "called", "value"), "the findings table (assess_findings)")
    modality = pl.col("modality").fill_null("image") if "modality" in findings.columns else pl.lit("image")
    called = findings.filter(pl.col("called").fill_null(False))
    verdict.image_called = called.filter(modality == "image").height > 0
    planted = _select(findings, metric=PLANTED_METRIC, stratum=FINDINGS_STRATUM, attribute=attribute, label=label,
                      group=transition).filter(modality == "text")
    verdict.text_called = bool(planted.height == 1 and planted["called"].fill_null(False)[0]
                               and _finite(planted["value"][0]) and np.sign(planted["value"][0]) == np.sign(sign))
    return verdict


def _share(flags: list[bool | None]) -> float | None:
    return round(sum(bool(f) for f in flags) / len(flags), 4) if flags else None


def false_positive_rate_by_stratum(fair: list[RunVerdict]) -> dict[str, float]:
    """Per stratum, the share of fair runs with a called finding in it (diagnoses where false positives come from)."""
    strata = sorted({s for v in fair for s in v.called_strata})
    return {stratum: _share([stratum in v.called_strata for v in fair]) for stratum in strata}


# The bench's arms (bench/validity.py) and what each reports: its JSON keys besides "runs".
ARM_FIGURES = {
    "null": ("false_positive_rate",),
    "default": ("power", "coverage", "confounded_rate"),
    "weak": ("power", "planted_effect", "comparisons"),
    "noisy": ("power",),
    "confound": ("finding_rate", "confounded_rate"),
    "clusters": ("coverage", "cluster_to_row_width"),
    "few": ("coverage",),
    "text_side": ("text_called_rate", "image_called_rate"),
}
# Each arm's targets: (figure, "<=" or ">=", bound).
TARGETS = {
    "null": [("false_positive_rate", "<=", 0.05)],
    "default": [("power", ">=", 0.95), ("coverage", ">=", 0.93), ("confounded_rate", "<=", 0.10)],
    "weak": [("power", ">=", 0.8), ("comparisons", ">=", 100)],
    "noisy": [("power", ">=", 0.9)],
    "confound": [("finding_rate", "<=", 0.1), ("confounded_rate", ">=", 0.9)],
    "clusters": [("coverage", ">=", 0.9)],
    "few": [("coverage", ">=", 0.9)],
    "text_side": [("text_called_rate", ">=", 0.9), ("image_called_rate", "<=", 0.1)],
}


def arm_figures(arm: str, verdicts: list[RunVerdict], *, planted_effect: float | None = None,
                width_ratios: list[float] | None = None) -> dict[str, Any]:
    """The JSON object of one arm: ``runs`` and exactly the figures :data:`ARM_FIGURES` names."""
    if arm not in ARM_FIGURES:
        raise ValueError(f"unknown arm {arm!r}; the arms are {list(ARM_FIGURES)}")
    values = {
        "false_positive_rate": lambda: _share([v.any_called for v in verdicts]),
        "power": lambda: _share([v.found for v in verdicts]),
        "coverage": lambda: _share([v.covered for v in verdicts]),
        "confounded_rate": lambda: (_share([v.run_verdict == "confounded" for v in verdicts]) if arm == "confound"
                                    else _share([v.confounded > 0 for v in verdicts])),
        "finding_rate": lambda: _share([v.run_verdict == "finding" for v in verdicts]),
        "planted_effect": lambda: None if planted_effect is None else round(planted_effect, 5),
        "comparisons": lambda: min((v.comparisons for v in verdicts if v.comparisons is not None), default=None),
        "cluster_to_row_width": lambda: round(float(np.mean(width_ratios)), 3) if width_ratios else None,
        "text_called_rate": lambda: _share([v.text_called for v in verdicts]),
        "image_called_rate": lambda: _share([v.image_called for v in verdicts]),
    }
    return {"runs": len(verdicts), **{name: values[name]() for name in ARM_FIGURES[arm]}}


def missed_targets(arm: str, figures: dict[str, Any]) -> list[str]:
    """The targets of ``arm`` its figures miss, in words (empty when it meets every one)."""
    missed = []
    for name, op, bound in TARGETS[arm]:
        value = figures.get(name)
        if value is None or (value > bound if op == "<=" else value < bound):
            missed.append(f"{arm}.{name} = {value} (target {op} {bound})")
    return missed


def wilson_95(share: float | None, runs: int) -> tuple[float, float] | None:
    """Wilson's 95% interval of a share over ``runs`` runs (how sure a rate on 20 worlds is)."""
    if share is None or runs == 0:
        return None
    z, p = 1.959963984540054, share
    centre, spread = p + z * z / (2 * runs), z * math.sqrt(p * (1 - p) / runs + z * z / (4 * runs * runs))
    return (round(max(0.0, (centre - spread) / (1 + z * z / runs)), 3), round(min(1.0, (centre + spread) / (1 + z * z / runs)), 3))
