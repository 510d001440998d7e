"""``metrics.parquet``: every metric of every stratum and attribute, with intervals, n and notes.

:func:`compute_metrics` reads the frames :mod:`counterfactual_lab.evaluate` produces —
``predictions`` (the pool rows with ``score_<label>`` and ``top1``), ``retrieval`` (query, id,
content_key, score) — and the judge's ``counterfactuals`` (for CITS). Per attribute, in order:

1. the comparison stratum of the run's design (:mod:`~counterfactual_lab.metrics.strata`):
   flip rate and probability gaps over its pairs, overall and per transition; in the
   ``generated`` stratum the control metrics beside them; selection rate, demographic parity
   and equalized odds over its pool; Skew@K, MaxSkew@K, MinSkew@K, NDKL and NDKL@K per query;
2. the ``observational`` stratum (originals): the group and retrieval metrics, descriptive;
3. CITS of the kept counterfactuals.

The desired distribution of retrieval is uniform over the attribute's values
(``attribute_values``, the config's ``attributes``; without it, the groups present) in the
``generated`` and ``evaluate_only`` strata, and the pool's own mix in the ``observational`` and
``real_vs_generated`` strata, whose pools the data, not the design, balance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.metrics.cits import cits_rows
from counterfactual_lab.metrics.counterfactual_fairness import control_metric_rows, pair_metric_rows
from counterfactual_lab.metrics.group_fairness import group_fairness_rows
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.pairs import control_pairs, member_pairs, original_pairs, reconstruction_pairs
from counterfactual_lab.metrics.retrieval import ranked_pool, retrieval_rows
from counterfactual_lab.metrics.schema import (
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
    VARIANT_ORIGINAL,
    VARIANT_RECONSTRUCTION,
    metrics_frame,
)
from counterfactual_lab.metrics.strata import (
    comparison_pool,
    comparison_stratum,
    normalise_predictions,
    observational_pool,
    restrict_groups,
)

_PAIRS = {
    STRATUM_GENERATED: reconstruction_pairs,
    STRATUM_EVALUATE_ONLY: member_pairs,
    STRATUM_REAL_VS_GENERATED: original_pairs,
}
# Strata whose pool is balanced by design: the desired distribution is uniform over the values.
_UNIFORM_DESIRED = (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY)


def _with_note(rows: list[dict[str, Any]], note: str | None) -> list[dict[str, Any]]:
    if note:
        for row in rows:
            row["note"] = note if row["note"] is None else f"{row['note']}; {note}"
    return rows


def _spelled_as_in(values: Sequence[str] | None, predictions: pl.DataFrame) -> list[str] | None:
    """The configured values in the pool's spelling (the config may write ``Female`` for ``female``)."""
    if values is None:
        return None
    present = {g.casefold(): g for g in predictions["group"].drop_nulls().unique().to_list()}
    return sorted({present.get(v.casefold(), v) for v in values})


def _pool_rows(
    pool: pl.DataFrame,
    retrieval: pl.DataFrame,
    attribute: str,
    stratum: str,
    audit: Any,
    settings: IntervalSettings,
    values: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """Group fairness and retrieval rows of one stratum's pool of one attribute."""
    uniform = stratum in _UNIFORM_DESIRED
    pool, left_out = restrict_groups(pool, values if uniform else None)
    if pool.height == 0:
        return []
    rows = group_fairness_rows(pool, attribute, stratum, list(audit.labels), settings, audit.min_group_size)
    if retrieval.height:
        desired = (sorted(values) if values is not None else sorted(pool["group"].unique().to_list())) if uniform else None
        for query in audit.queries:
            ranked = ranked_pool(pool, retrieval, query)
            rows += retrieval_rows(ranked, attribute, stratum, query, audit.top_k, settings, desired)
    return _with_note(rows, left_out)


def compute_metrics(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    audit: Any,
    attribute_values: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """The metrics table (:data:`~counterfactual_lab.metrics.schema.METRICS_SCHEMA`) of one run.

    ``audit`` is the :class:`~counterfactual_lab.config.AuditModelConfig` (labels, queries,
    top_k, min_group_size, bootstrap settings); ``attribute_values`` maps each attribute to
    the values the config lists for it (the uniform desired distribution of retrieval, and
    the groups of the balanced generated sets).
    """
    labels = list(audit.labels)
    settings = IntervalSettings.from_audit(audit)
    if predictions.height == 0:
        return metrics_frame([])
    predictions = normalise_predictions(predictions, labels)
    retrieval = retrieval if retrieval is not None else pl.DataFrame()
    counterfactuals = counterfactuals if counterfactuals is not None else pl.DataFrame()
    comparison = comparison_stratum(predictions)
    generated = comparison == STRATUM_GENERATED or (
        "variant" in counterfactuals.columns and (counterfactuals["variant"] == VARIANT_RECONSTRUCTION).any()
    )
    rows: list[dict[str, Any]] = []
    for attribute in sorted(predictions["attribute"].drop_nulls().unique().to_list()):
        rows_of = predictions.filter(pl.col("attribute") == attribute)
        values = _spelled_as_in(attribute_values.get(attribute) if attribute_values else None, rows_of)
        # An attribute with generated images gets pair rows (undefined, with a note, when none pair up);
        # one with originals only (nothing generated for it) is observational only.
        if comparison is not None and (rows_of["variant"] != VARIANT_ORIGINAL).any():
            floor = audit.min_group_size
            rows += pair_metric_rows(_PAIRS[comparison](rows_of, labels), attribute, comparison, labels, settings, floor)
            if comparison == STRATUM_GENERATED:
                rows += control_metric_rows(control_pairs(rows_of, labels), attribute, comparison, labels, settings, floor)
            rows += _pool_rows(comparison_pool(rows_of, comparison), retrieval, attribute, comparison, audit, settings, values)
        rows += _pool_rows(observational_pool(rows_of), retrieval, attribute, STRATUM_OBSERVATIONAL, audit, settings, values)
        cits_stratum = STRATUM_GENERATED if generated else STRATUM_REAL_VS_GENERATED
        rows += cits_rows(counterfactuals, attribute, cits_stratum, settings)
    return metrics_frame(rows)
