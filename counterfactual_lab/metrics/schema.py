"""The shape of ``metrics.parquet`` and of one estimate in it.

Columns, in this order (fixed by the shared contract; other tools read them)::

    metric, stratum, attribute, group, label, query, value, ci_low, ci_high, n, n_sources,
    skipped_resamples, note

then the error-control columns, added after them (docs/metrics.md, "How many comparisons")::

    ci_low_adjusted, ci_high_adjusted, confidence_adjusted, comparisons

the interval at the level ``confidence_adjusted`` the row was decided at (Holm's step-down or
Benjamini–Hochberg over the m rows of the run's family, ``comparisons``), set on the family's
rows and null elsewhere; then the decision's inputs::

    p_value, p_adjusted, in_family, min_effect, se, interval_method

``se`` and ``interval_method`` (``"t"``, ``"wilson"`` or ``"percentile"``) say how the row's
interval is drawn, so an interval at any level follows from the table alone
(:func:`counterfactual_lab.metrics.intervals.interval_at`); ``p_value`` inverts the row's
interval against its reference, ``p_adjusted`` is after the error control, ``in_family`` says
whether the row counts in m, and ``min_effect`` is the smallest difference the row is called on
(:mod:`counterfactual_lab.metrics.error_control`).

then the ranking columns (docs/metrics.md,
"Retrieval fairness")::

    protocol, k, desired

what a skew or NDKL row was measured against: ``audit.skew_protocol``, the K of its top K (for
``ndkl``, the length of the whole ranking) and its desired distribution written out
(``uniform: female=0.5, male=0.5``, ``pool: female=0.25, male=0.75``); null on every other row.

then the design column (docs/metrics.md, "Which modality carries the gap")::

    modality

what changed between the two sides of a pair row: ``image`` (the counterfactual image, the source's
``{person}`` word), ``text`` (the reconstruction, the target's word) or ``both``; every other row
(group, retrieval, observational, CITS, drift, designs) is the images' own: ``image``.

then the designs' columns (docs/metrics.md, "Phrasing robustness", "How much answers change",
"Synthetic shift")::

    phrasing, measure

``phrasing``: the phrasing a row measures, for a probe asked in several (``audit.phrasings``); null
on the pooled row over every phrasing (the row that is called) and wherever a probe has one
phrasing. ``measure``: what a row of a metric that measures several things measures
(``answer_change``: ``rouge_l`` or ``embedding_cosine``; ``synthetic_shift`` and ``phrasing_spread``:
the metric they are of, e.g. ``prob_gap_signed``); null elsewhere.

An undefined value is a null ``value`` with a non-null ``note`` saying why; a ``note`` may also
accompany a defined value (e.g. the groups left out for being too small).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from counterfactual_lab.evaluate.readings import MODALITY_IMAGE

_CONTRACT_SCHEMA = {
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
# The shared contract's columns; the error-control ones follow them, then the decision's inputs.
CONTRACT_COLUMNS = tuple(_CONTRACT_SCHEMA)
FAMILY_WISE_SCHEMA = {
    "ci_low_adjusted": pl.Float64,
    "ci_high_adjusted": pl.Float64,
    "confidence_adjusted": pl.Float64,
    "comparisons": pl.Int64,
}
DECISION_SCHEMA = {
    "p_value": pl.Float64,
    "p_adjusted": pl.Float64,
    "in_family": pl.Boolean,
    "min_effect": pl.Float64,
    "se": pl.Float64,
    "interval_method": pl.String,
}
# What a retrieval row (skew, NDKL) was measured against; null on every other row.
RANKING_SCHEMA = {
    "protocol": pl.String,
    "k": pl.Int64,
    "desired": pl.String,
}
# Which modality a pair row reads (metrics/modalities.py): image, text or both.
MODALITY_SCHEMA = {
    "modality": pl.String,
}
DEFAULT_MODALITY = MODALITY_IMAGE
# Which phrasing of a probe a row measures, and what a row of a many-measure metric measures (module doc).
DESIGNS_SCHEMA = {
    "phrasing": pl.String,
    "measure": pl.String,
}
# What identifies a row of the table: no two rows of a run share these (findings, the report's table
# and ``cflab compare``/``--history`` match rows on them). An image row and a text row of one metric
# differ only in ``modality``; one phrasing's row and the pooled row only in ``phrasing``. A table from
# before a column existed reads it as null, ``modality`` as ``image`` (:func:`row_key`).
ROW_KEY = ("metric", "stratum", "attribute", "group", "label", "query", "phrasing", "measure", "modality")
METRICS_SCHEMA = {
    **_CONTRACT_SCHEMA, **FAMILY_WISE_SCHEMA, **DECISION_SCHEMA, **RANKING_SCHEMA, **MODALITY_SCHEMA, **DESIGNS_SCHEMA,
}

# How a row's interval is drawn (``interval_method``): t with C − 1 degrees of freedom on the
# cluster-bootstrap standard error; Wilson's score interval at the effective sample size (a
# proportion); percentile of the bootstrap replicates (group and retrieval spreads: never called).
INTERVAL_T, INTERVAL_WILSON, INTERVAL_PERCENTILE = "t", "wilson", "percentile"

# Strata: which images a row compares (docs/metrics.md, "Design").
STRATUM_GENERATED = "generated"  # counterfactual vs reconstruction, balanced generated sets: the findings
STRATUM_OBSERVATIONAL = "observational"  # originals only: descriptive
STRATUM_REAL_VS_GENERATED = "real_vs_generated"  # reconstruction off: originals vs counterfactuals
STRATUM_EVALUATE_ONLY = "evaluate_only"  # a dataset of counterfactual sets
STRATA = (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY, STRATUM_REAL_VS_GENERATED, STRATUM_OBSERVATIONAL)
# Not a stratum of the model under audit: people's labels on the generated sets, and how often the
# judge agrees with them (counterfactual_lab/review). Never called; the findings leave these rows out.
STRATUM_REVIEW = "review"

CONTROL_PREFIX = "control_"
UNKNOWN_GROUP = "unknown"


@dataclass(frozen=True)
class Estimate:
    """One number with its interval and what it rests on.

    ``n``: rows or pairs used; ``n_sources``: clusters (source images) among them;
    ``skipped``: bootstrap resamples where the statistic was undefined (None when not
    bootstrapped); ``note``: why ``value`` is None, or what was left out. ``se``: the standard
    error the interval is drawn with and ``method`` how (:data:`INTERVAL_T`,
    :data:`INTERVAL_WILSON`, :data:`INTERVAL_PERCENTILE`), so that it can be redrawn at any level.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    n_sources: int = 0
    skipped: int | None = None
    note: str | None = None
    se: float | None = None
    method: str | None = INTERVAL_PERCENTILE

    @classmethod
    def undefined(cls, note: str, n: int = 0, n_sources: int = 0) -> "Estimate":
        return cls(None, None, None, n, n_sources, None, note)

    def with_note(self, note: str | None) -> "Estimate":
        if not note:
            return self
        return replace(self, note=note if self.note is None else f"{self.note}; {note}")

    def without_interval(self) -> "Estimate":
        """The value alone: no interval at any level, not bootstrapped."""
        return replace(self, low=None, high=None, skipped=None, se=None, method=None)


def metric_row(
    metric: str,
    stratum: str,
    attribute: str,
    estimate: Estimate,
    *,
    group: str | None = None,
    label: str | None = None,
    query: str | None = None,
    ranking: Mapping[str, Any] | None = None,
    modality: str = DEFAULT_MODALITY,
    phrasing: str | None = None,
    measure: str | None = None,
) -> dict[str, Any]:
    """One row of the metrics table; ``ranking``: a retrieval row's ``protocol``, ``k`` and ``desired``;
    ``modality``: what a pair row's two sides differ in (``image``, ``text``, ``both``);
    ``phrasing``, ``measure``: the designs' columns (module doc)."""
    if estimate.value is None and not estimate.note:
        raise ValueError(f"{metric} ({stratum}, {attribute}) is undefined without a note saying why")
    value = None if estimate.value is None else float(estimate.value)
    interval = value is not None and estimate.low is not None and estimate.high is not None

    def optional(x: float | None) -> float | None:
        return None if value is None or x is None else float(x)

    return {
        "metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label,
        "query": query, "value": value,
        "ci_low": optional(estimate.low), "ci_high": optional(estimate.high),
        "n": int(estimate.n), "n_sources": int(estimate.n_sources),
        "skipped_resamples": None if estimate.skipped is None else int(estimate.skipped),
        "note": estimate.note,
        # Set by the error control (counterfactual_lab.metrics.error_control) on the run's whole table.
        "ci_low_adjusted": None, "ci_high_adjusted": None, "confidence_adjusted": None, "comparisons": None,
        "p_value": None, "p_adjusted": None, "in_family": False, "min_effect": None,
        "se": optional(estimate.se) if interval else None,
        "interval_method": estimate.method if interval else None,
        **{column: (ranking or {}).get(column) for column in RANKING_SCHEMA},
        "modality": modality,
        "phrasing": phrasing, "measure": measure,
    }


def metrics_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows as the metrics table (the empty table keeps its columns)."""
    return pl.DataFrame(rows, schema=METRICS_SCHEMA) if rows else pl.DataFrame(schema=METRICS_SCHEMA)


def metric_kind(metric: str) -> str:
    """``max_skew@10`` -> ``max_skew``; other names are their own kind."""
    return metric.split("@", 1)[0]


def metric_k(metric: str) -> str | None:
    """``max_skew@10`` -> ``"10"``; None when the name carries no K."""
    return metric.split("@", 1)[1] if "@" in metric else None


def missing(value: Any) -> bool:
    """Whether a number is absent: None, NaN or infinite."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def row_key(row: Mapping[str, Any], columns: Sequence[str] = ROW_KEY) -> tuple:
    """The row's :data:`ROW_KEY` values (a missing ``modality``: ``image``, as every row before it existed)."""
    return tuple((row.get(c) or DEFAULT_MODALITY) if c == "modality" else row.get(c) for c in columns)
