"""Score one audit of the planted-bias world against the truth, and many audits as rates.

Inputs are a run's ``metrics.parquet`` and ``findings.assess_findings(metrics)`` (issue 8's
findings contract: one row per comparable metric row, with the metric row's ``metric,
stratum, attribute, group, label`` and a boolean ``called``). Per run:

* ``any_called``: some finding row is called — for the fair model, a false positive;
* ``found``: the planted finding is called: the ``prob_gap_signed`` row of stratum
  ``generated`` for the biased label and transition (``group`` = "source→target");
* ``covered``: that metric row's interval [ci_low, ci_high] contains the planted effect.

Over runs (:func:`rates`): false-positive rate = share of fair runs with ``any_called``;
power = share of biased runs with ``found``; coverage = share of biased runs with
``covered`` (a run whose row is missing or undefined counts as neither found nor covered).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

PLANTED_METRIC = "prob_gap_signed"
FINDINGS_STRATUM = "generated"
KEY_COLUMNS = ("metric", "stratum", "attribute", "group", "label")


@dataclass
class RunVerdict:
    """What one audit of one world said, scored against the truth."""

    any_called: bool
    called: list[str] = field(default_factory=list)  # the called findings, as sentences (or keys)
    called_strata: list[str] = field(default_factory=list)  # the strata those findings are in
    found: bool | None = None  # None when no planted effect was asked about (fair runs)
    covered: bool | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    n_sources: int | None = None
    note: str | None = None

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
    verdict.found = bool(finding.height == 1 and finding["called"].fill_null(False)[0])
    if _finite(row["ci_low"]) and _finite(row["ci_high"]):
        verdict.covered = bool(row["ci_low"] <= planted <= row["ci_high"])
    else:
        verdict.covered = False
        verdict.note = f"the planted metric row has no interval ({row.get('note')})"
    return verdict


def _share(flags: list[bool | None]) -> float | None:
    return round(sum(bool(f) for f in flags) / len(flags), 4) if flags else None


def false_positive_rate_by_stratum(fair: list[RunVerdict]) -> dict[str, float]:
    """Per stratum, the share of fair runs with a called finding in it (diagnoses where false positives come from)."""
    strata = sorted({s for v in fair for s in v.called_strata})
    return {stratum: _share([stratum in v.called_strata for v in fair]) for stratum in strata}


def rates(fair: list[RunVerdict], biased: list[RunVerdict], real_vs_generated: list[RunVerdict]) -> dict[str, Any]:
    """The bench's figures from per-run verdicts (shares of runs; None when there are no runs)."""
    return {
        "false_positive_rate": _share([v.any_called for v in fair]),
        "power": _share([v.found for v in biased]),
        "coverage": _share([v.covered for v in biased]),
        "real_vs_generated_false_positive_rate": _share([v.any_called for v in real_vs_generated]),
    }
