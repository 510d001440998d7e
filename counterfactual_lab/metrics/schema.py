"""The shape of ``metrics.parquet`` and of one estimate in it.

Columns, in this order (fixed by the shared contract; other tools read them)::

    metric, stratum, attribute, group, label, query, value, ci_low, ci_high, n, n_sources,
    skipped_resamples, note

An undefined value is a null ``value`` with a non-null ``note`` saying why; a ``note`` may also
accompany a defined value (e.g. the groups left out for being too small).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import polars as pl

METRICS_SCHEMA = {
    "metric": pl.String,
    "stratum": pl.String,
    "attribute": pl.String,
    "group": pl.String,
    "label": pl.String,
    "query": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n": pl.Int64,
    "n_sources": pl.Int64,
    "skipped_resamples": pl.Int64,
    "note": pl.String,
}

# Strata: which images a row compares (docs/metrics.md, "Design").
STRATUM_GENERATED = "generated"  # counterfactual vs reconstruction, balanced generated sets: the findings
STRATUM_OBSERVATIONAL = "observational"  # originals only: descriptive
STRATUM_REAL_VS_GENERATED = "real_vs_generated"  # reconstruction off: originals vs counterfactuals
STRATUM_EVALUATE_ONLY = "evaluate_only"  # a dataset of counterfactual sets
STRATA = (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY, STRATUM_REAL_VS_GENERATED, STRATUM_OBSERVATIONAL)

# predictions.parquet `variant` values (names other tools rely on).
VARIANT_ORIGINAL = "original"
VARIANT_RECONSTRUCTION = "reconstruction"
VARIANT_COUNTERFACTUAL = "counterfactual"

CONTROL_PREFIX = "control_"
UNKNOWN_GROUP = "unknown"


@dataclass(frozen=True)
class Estimate:
    """One number with its interval and what it rests on.

    ``n``: rows or pairs used; ``n_sources``: clusters (source images) among them;
    ``skipped``: bootstrap resamples where the statistic was undefined (None when not
    bootstrapped); ``note``: why ``value`` is None, or what was left out.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    n_sources: int = 0
    skipped: int | None = None
    note: str | None = None

    @classmethod
    def undefined(cls, note: str, n: int = 0, n_sources: int = 0) -> "Estimate":
        return cls(None, None, None, n, n_sources, None, note)

    def with_note(self, note: str | None) -> "Estimate":
        if not note:
            return self
        return replace(self, note=note if self.note is None else f"{self.note}; {note}")


def metric_row(
    metric: str,
    stratum: str,
    attribute: str,
    estimate: Estimate,
    *,
    group: str | None = None,
    label: str | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    """One row of the metrics table."""
    if estimate.value is None and not estimate.note:
        raise ValueError(f"{metric} ({stratum}, {attribute}) is undefined without a note saying why")
    value = None if estimate.value is None else float(estimate.value)
    return {
        "metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label,
        "query": query, "value": value,
        "ci_low": None if value is None or estimate.low is None else float(estimate.low),
        "ci_high": None if value is None or estimate.high is None else float(estimate.high),
        "n": int(estimate.n), "n_sources": int(estimate.n_sources),
        "skipped_resamples": None if estimate.skipped is None else int(estimate.skipped),
        "note": estimate.note,
    }


def metrics_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows as the metrics table (the empty table keeps its columns)."""
    return pl.DataFrame(rows, schema=METRICS_SCHEMA) if rows else pl.DataFrame(schema=METRICS_SCHEMA)
